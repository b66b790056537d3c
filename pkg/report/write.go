package report

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// WriteJSON writes the report as one line of JSON.
func (o *Offline) WriteJSON(w io.Writer) error {
	if err := json.NewEncoder(w).Encode(o); err != nil {
		return fmt.Errorf("report: writing the JSON: %w", err)
	}
	return nil
}

// SVGPath is where WriteFiles puts the timeline for a report written to
// path: path with its extension replaced by .svg ("offline.json" gives
// "offline.svg", "offline" gives "offline.svg").
func SVGPath(path string) string {
	return strings.TrimSuffix(path, filepath.Ext(path)) + ".svg"
}

// CheckPath reports what would keep WriteFiles from writing to path,
// before the offline: a path whose SVG would overwrite it (it ends in
// .svg), or a directory that does not exist.
func CheckPath(path string) error {
	switch {
	case path == "":
		return errors.New("report: the report path is empty; give a file such as offline.json")
	case strings.EqualFold(filepath.Ext(path), ".svg"):
		return fmt.Errorf("report: report path %q ends in .svg, where the timeline goes; give the JSON's path, such as %q", path, strings.TrimSuffix(path, filepath.Ext(path))+".json")
	}
	dir := filepath.Dir(path)
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("report: no directory %s for the report (%w); create it or choose another path", dir, err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("report: %s, where the report should go, is not a directory; choose another path", dir)
	}
	return nil
}

// WriteFiles writes the report as JSON to path and its timeline as SVG to
// SVGPath(path), each replacing any file there only once it is whole (a
// temporary file renamed over it).
func (o *Offline) WriteFiles(path string) error {
	if err := CheckPath(path); err != nil {
		return err
	}
	var js, svg bytes.Buffer
	if err := o.WriteJSON(&js); err != nil {
		return err
	}
	if err := o.WriteSVG(&svg); err != nil {
		return err
	}
	return errors.Join(writeFile(path, js.Bytes()), writeFile(SVGPath(path), svg.Bytes()))
}

// writeFile writes b to path through a temporary file in its directory.
func writeFile(path string, b []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("report: %w", err)
	}
	_, err = f.Write(b)
	err = errors.Join(err, f.Close())
	if err == nil {
		// CreateTemp makes the file private; a report is for reading.
		err = os.Chmod(f.Name(), 0o644)
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		_ = os.Remove(f.Name())
		return fmt.Errorf("report: writing %s: %w", path, err)
	}
	return nil
}
