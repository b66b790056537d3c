package cli

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/lameduck/lameduck/pkg/probe"
	"github.com/lameduck/lameduck/registry"
)

// programConfig is one supervised program: from the flags of `lameduck run`,
// or from one entry under programs: in a --config file, whose keys are the
// flags' names.
type programConfig struct {
	Name         string // output prefix and metrics label
	Service      string
	Addr         string
	Port         int
	ID           string
	Standby      bool
	StandbyPort  int
	StandbyID    string
	RecycleAfter time.Duration
	RecycleRSS   uint64
	Ready, Live  string // check URLs; "" means the default (TCP connect) and none
	Budget       time.Duration
	ConnWait     time.Duration // with ConnWaitSet: the most the offline waits for connections to close
	ConnWaitSet  bool          // false: the wait lasts until the deadline
	Command      []string      // argv; Command[0] is the program
	Env          []string      // KEY=VALUE, added to lameduck's environment
	Dir          string

	// From a config file: the line of each key's value, and of the
	// program's name. Zero for flags.
	lines map[string]int
	line  int
}

// needsStandbyPort reports whether the program runs a second copy at times:
// a warm standby, or recycling (which starts the replacement first).
func (p *programConfig) needsStandbyPort() bool {
	return p.Standby || p.RecycleAfter > 0 || p.RecycleRSS > 0
}

// instance is the registry entry of the program's first copy.
func (p *programConfig) instance() registry.Instance {
	return registry.Instance{Service: p.Service, ID: p.ID, Address: p.Addr, Port: p.Port}
}

// fieldError is a problem with one flag or config key. It is rendered as
// "--key value: msg" for flags and "key value: msg" in a config file.
type fieldError struct {
	key, value string
	missing    bool
	msg        string
}

func (e *fieldError) render(prefix string) string {
	if e.missing {
		return fmt.Sprintf("missing %s%s; %s", prefix, e.key, e.msg)
	}
	return fmt.Sprintf("%s%s %s: %s", prefix, e.key, e.value, e.msg)
}

func (e *fieldError) Error() string { return e.render("") }

// finish fills in what depends on other fields (the standby port, instance
// IDs, {port} in check URLs) and checks the program. Its error is a
// *fieldError.
func (p *programConfig) finish() error {
	switch {
	case len(p.Command) == 0 || p.Command[0] == "":
		return &fieldError{key: "command", missing: true, msg: "give the program to run and its arguments"}
	case p.Service == "":
		return &fieldError{key: "service", missing: true, msg: "name the service the program serves"}
	case p.Port < 1 || p.Port > 65535:
		return &fieldError{key: "port", value: strconv.Itoa(p.Port), msg: "give the port the program serves on (1-65535)"}
	case p.Budget <= 0:
		return &fieldError{key: "budget", value: p.Budget.String(), msg: "want a positive duration such as 30s"}
	case p.ConnWait < 0:
		return &fieldError{key: "conn-wait", value: p.ConnWait.String(), msg: "want a duration of 0 or more, such as 250ms (0: no wait for connections)"}
	case p.RecycleAfter < 0:
		return &fieldError{key: "recycle-after", value: p.RecycleAfter.String(), msg: "want a positive duration such as 24h, or 0 for no age limit"}
	}
	if !p.needsStandbyPort() {
		if p.StandbyPort != 0 {
			return &fieldError{key: "standby-port", value: strconv.Itoa(p.StandbyPort), msg: "is only used with standby, recycle-after or recycle-rss; add one or drop it"}
		}
		if p.StandbyID != "" {
			return &fieldError{key: "standby-id", value: strconv.Quote(p.StandbyID), msg: "is only used with standby, recycle-after or recycle-rss; add one or drop it"}
		}
	} else {
		if p.StandbyPort == 0 {
			if p.Port == 65535 {
				return &fieldError{key: "port", value: "65535", msg: "leaves no port+1 for the second copy; give standby-port"}
			}
			p.StandbyPort = p.Port + 1
		}
		switch {
		case p.StandbyPort < 1 || p.StandbyPort > 65535:
			return &fieldError{key: "standby-port", value: strconv.Itoa(p.StandbyPort), msg: "want a port between 1 and 65535 for the second copy"}
		case p.StandbyPort == p.Port:
			return &fieldError{key: "standby-port", value: strconv.Itoa(p.StandbyPort), msg: "is the program's own port; give the second copy another one"}
		}
	}
	if p.ID == "" {
		p.ID = fmt.Sprintf("%s-%s-%d", p.Service, p.Addr, p.Port)
		if p.needsStandbyPort() && p.StandbyID == "" {
			p.StandbyID = fmt.Sprintf("%s-%s-%d", p.Service, p.Addr, p.StandbyPort)
		}
	}
	if p.StandbyID != "" && p.StandbyID == p.ID {
		return &fieldError{key: "standby-id", value: strconv.Quote(p.StandbyID), msg: "is the first copy's ID; the two copies need different IDs"}
	}
	for _, f := range []struct {
		key string
		url *string
	}{{"ready", &p.Ready}, {"live", &p.Live}} {
		if *f.url == "" {
			continue
		}
		u, problem := checkURL(*f.url, p.Port, p.needsStandbyPort())
		if problem != "" {
			return &fieldError{key: f.key, value: strconv.Quote(redactURL(*f.url)), msg: problem}
		}
		*f.url = u
	}
	if err := p.instance().Validate(); err != nil {
		return &fieldError{key: "addr", value: strconv.Quote(p.Addr), msg: strings.TrimPrefix(err.Error(), "registry: ")}
	}
	return nil
}

// checkURL checks a readiness or liveness URL and writes {port} in place of
// the program's own port, so that each copy is checked on its own port. With
// two copies (needPort) a URL must name the copy's port, else both copies
// would be judged by one of them. It returns the URL to use, or a problem.
func checkURL(raw string, port int, needPort bool) (string, string) {
	const example = "such as http://127.0.0.1:{port}/healthz"
	u, err := url.Parse(strings.ReplaceAll(raw, probe.PortPlaceholder, "1"))
	switch {
	case err != nil, u.Scheme != "http" && u.Scheme != "https", u.Host == "":
		return "", "want an http:// or https:// URL " + example
	case u.User != nil:
		return "", "carries credentials; checks send none, so leave them out"
	}
	if !strings.Contains(raw, probe.PortPlaceholder) && u.Port() == strconv.Itoa(port) {
		// url.Parse accepted it, so the authority ends with ":port".
		start := strings.Index(raw, "://") + 3
		end := len(raw)
		if k := strings.IndexAny(raw[start:], "/?#"); k >= 0 {
			end = start + k
		}
		raw = raw[:end-len(u.Port())] + probe.PortPlaceholder + raw[end:]
	}
	if needPort && !strings.Contains(raw, probe.PortPlaceholder) {
		return "", "names neither the program's port nor {port}, so both copies would be checked on one port; write {port} where the copy's port goes, " + example
	}
	return raw, ""
}

// redactURL replaces the user info of a URL, if any, with "***", so that
// an error can show the rest.
func redactURL(raw string) string {
	start := strings.Index(raw, "://")
	if start < 0 {
		return raw
	}
	start += 3
	end := len(raw)
	if k := strings.IndexAny(raw[start:], "/?#"); k >= 0 {
		end = start + k
	}
	if at := strings.LastIndex(raw[start:end], "@"); at >= 0 {
		return raw[:start] + "***" + raw[start+at:]
	}
	return raw
}

// parseSize reads a byte count: a plain number of bytes, or a number and a
// unit: B, kB, MB, GB, TB (powers of 1000) or KiB, MiB, GiB, TiB (powers of
// 1024), in any letter case, with an optional space between.
func parseSize(s string) (uint64, error) {
	bad := fmt.Errorf("%q is not a size; want one such as 512MiB, 1GiB, 300MB or a number of bytes", s)
	t := strings.TrimSpace(s)
	k := strings.IndexFunc(t, func(r rune) bool { return (r < '0' || r > '9') && r != '.' })
	num, unit := t, ""
	if k >= 0 {
		num, unit = t[:k], strings.TrimSpace(t[k:])
	}
	units := map[string]float64{
		"": 1, "b": 1,
		"kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12,
		"kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40,
	}
	mult, ok := units[strings.ToLower(unit)]
	if !ok || num == "" {
		return 0, bad
	}
	f, err := strconv.ParseFloat(num, 64)
	if err != nil || math.IsInf(f, 0) || math.IsNaN(f) {
		return 0, bad
	}
	v := f * mult
	if v >= 1<<63 {
		return 0, fmt.Errorf("%q is too large a size", s)
	}
	return uint64(v), nil
}

// runFile is a parsed --config file.
type runFile struct {
	registries []string
	regLines   []int // the line of each registry URL
	programs   []programConfig
}

// Keys of a config file. A program's keys are the flags of the same name.
var (
	topKeys     = []string{"programs", "registries"}
	programKeys = []string{
		"addr", "budget", "command", "conn-wait", "dir", "env", "id", "live", "port", "ready",
		"recycle-after", "recycle-rss", "service", "standby", "standby-id", "standby-port",
	}
)

// configError is a problem at a line of a config file.
func configError(file string, line int, format string, args ...any) error {
	if line > 0 {
		return badInput("%s:%d: %s", file, line, fmt.Sprintf(format, args...))
	}
	return badInput("%s: %s", file, fmt.Sprintf(format, args...))
}

// loadRunConfig reads and checks a --config file. def holds the defaults
// the command line gives every program (addr, budget).
func loadRunConfig(path string, def programConfig) (*runFile, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, badInput("--config: %v", err)
	}
	return parseRunConfig(filepath.Base(path), data, def)
}

// parseRunConfig parses a config file's contents; file names it in errors.
// Every error is one line that starts with "file:line:" and never quotes a
// value that could be secret (env values).
func parseRunConfig(file string, data []byte, def programConfig) (*runFile, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, configError(file, 0, "is empty; it needs programs:, see examples/run-config.yaml")
		}
		return nil, yamlSyntaxError(file, err)
	}
	var next yaml.Node
	switch err := dec.Decode(&next); {
	case err == nil:
		return nil, configError(file, next.Line, "a second YAML document; put every program under one programs:")
	case !errors.Is(err, io.EOF):
		return nil, yamlSyntaxError(file, err)
	}
	root := resolve(&doc)
	if root.Kind == yaml.DocumentNode && len(root.Content) == 1 {
		root = resolve(root.Content[0])
	}
	if root.Kind != yaml.MappingNode {
		return nil, configError(file, root.Line, "want a mapping with programs: at the top, see examples/run-config.yaml")
	}
	rf := &runFile{}
	var programs *yaml.Node
	err := eachKey(file, root, "at the top level", topKeys, func(key string, k, v *yaml.Node) error {
		switch key {
		case "registries":
			items, err := stringList(file, key, v)
			if err != nil {
				return err
			}
			for i, s := range items {
				rf.registries = append(rf.registries, s)
				rf.regLines = append(rf.regLines, resolve(v.Content[i]).Line)
			}
		case "programs":
			programs = v
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if programs == nil || (programs.Kind == yaml.MappingNode && len(programs.Content) == 0) || programs.Tag == "!!null" {
		line := root.Line
		if programs != nil {
			line = programs.Line
		}
		return nil, configError(file, line, "no programs; give programs: with one entry per program, see examples/run-config.yaml")
	}
	if programs.Kind != yaml.MappingNode {
		return nil, configError(file, programs.Line, "programs: want a mapping from each program's name to its settings, see examples/run-config.yaml")
	}
	names := map[string]int{}
	for i := 0; i < len(programs.Content); i += 2 {
		k, v := resolve(programs.Content[i]), resolve(programs.Content[i+1])
		if k.Kind != yaml.ScalarNode || !validName(k.Value) {
			return nil, configError(file, k.Line, "program name %q: use letters, digits, '.', '_' and '-'", scalarText(k))
		}
		if first, dup := names[k.Value]; dup {
			return nil, configError(file, k.Line, "program %q is defined twice (first at line %d)", k.Value, first)
		}
		names[k.Value] = k.Line
		p, err := parseProgram(file, k, v, def)
		if err != nil {
			return nil, err
		}
		rf.programs = append(rf.programs, p)
	}
	if err := checkAcross(file, rf.programs); err != nil {
		return nil, err
	}
	return rf, nil
}

// yamlSyntaxError renders the YAML library's "yaml: line N: problem" as
// "file:N: problem".
func yamlSyntaxError(file string, err error) error {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	var line int
	if rest, ok := strings.CutPrefix(msg, "line "); ok {
		if n, after, ok := strings.Cut(rest, ": "); ok {
			if l, err := strconv.Atoi(n); err == nil {
				line, msg = l, after
			}
		}
	}
	return configError(file, line, "not valid YAML: %s", msg)
}

// resolve follows aliases (*name) to the node they name.
func resolve(n *yaml.Node) *yaml.Node {
	for i := 0; n.Kind == yaml.AliasNode && n.Alias != nil && i < 16; i++ {
		n = n.Alias
	}
	return n
}

// scalarText is a node's text for an error message: a scalar's value, cut
// short, or its kind.
func scalarText(n *yaml.Node) string {
	if n.Kind != yaml.ScalarNode {
		return "(a " + kindName(n) + ")"
	}
	if len(n.Value) > 40 {
		return n.Value[:40] + "..."
	}
	return n.Value
}

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "mapping"
	case yaml.SequenceNode:
		return "list"
	case yaml.ScalarNode:
		return "single value"
	}
	return "node"
}

func validName(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-') {
			return false
		}
	}
	return true
}

// eachKey calls f for every key of mapping m, in order, after refusing
// keys that are not scalars, duplicates, merges and keys not in valid.
// where says whose keys they are, for errors ("in program \"web\"").
func eachKey(file string, m *yaml.Node, where string, valid []string, f func(key string, k, v *yaml.Node) error) error {
	seen := map[string]int{}
	for i := 0; i+1 < len(m.Content); i += 2 {
		k, v := resolve(m.Content[i]), resolve(m.Content[i+1])
		if k.Kind != yaml.ScalarNode {
			return configError(file, k.Line, "a %s used as a key %s; keys are names such as port", kindName(k), where)
		}
		key := k.Value
		if k.Tag == "!!merge" {
			return configError(file, k.Line, "merge keys (<<) are not supported %s; write the keys out", where)
		}
		if first, dup := seen[key]; dup {
			return configError(file, k.Line, "key %q appears twice %s (first at line %d)", key, where, first)
		}
		seen[key] = k.Line
		if !slices.Contains(valid, key) {
			if isCredentialKey(key) {
				return configError(file, k.Line, "key %q %s: credentials never go in the file; pass --consul-token, --nacos-username and --nacos-password or set %s, %s and %s",
					key, where, EnvConsulToken, EnvNacosUsername, EnvNacosPassword)
			}
			hint := ""
			if near := nearest(key, valid); near != "" {
				hint = fmt.Sprintf(" (did you mean %q?)", near)
			}
			return configError(file, k.Line, "unknown key %q %s%s; valid keys: %s", key, where, hint, strings.Join(valid, ", "))
		}
		if err := f(key, k, v); err != nil {
			return err
		}
	}
	return nil
}

func isCredentialKey(key string) bool {
	k := strings.ToLower(key)
	for _, w := range []string{"token", "password", "passwd", "secret", "username", "credential"} {
		if strings.Contains(k, w) {
			return true
		}
	}
	return false
}

// nearest returns the valid key closest to key when it is a likely typo:
// about one edit per three letters away, or the same letters in another
// order.
func nearest(key string, valid []string) string {
	best, bestD := "", max(1, (len(key)+2)/3)+1
	for _, v := range valid {
		if d := editDistance(key, v); d < bestD {
			best, bestD = v, d
		}
	}
	if best != "" {
		return best
	}
	for _, v := range valid {
		if sameLetters(key, v) {
			return v
		}
	}
	return ""
}

func sameLetters(a, b string) bool {
	x, y := []byte(a), []byte(b)
	slices.Sort(x)
	slices.Sort(y)
	return string(x) == string(y)
}

// editDistance is the Levenshtein distance between a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// parseProgram reads one program's settings; name is its key under
// programs:.
func parseProgram(file string, name, body *yaml.Node, def programConfig) (programConfig, error) {
	p := programConfig{
		Name: name.Value, Service: name.Value, Addr: def.Addr, Budget: def.Budget,
		ConnWait: def.ConnWait, ConnWaitSet: def.ConnWaitSet,
		lines: map[string]int{}, line: name.Line,
	}
	where := fmt.Sprintf("in program %q", p.Name)
	if body.Kind != yaml.MappingNode {
		if body.Tag == "!!null" {
			return p, configError(file, name.Line, "program %q has no settings; give at least port and command", p.Name)
		}
		return p, configError(file, body.Line, "program %q: want a mapping of settings such as port: 8080, got a %s", p.Name, kindName(body))
	}
	err := eachKey(file, body, where, programKeys, func(key string, k, v *yaml.Node) error {
		p.lines[key] = v.Line
		fail := func(format string, args ...any) error {
			return configError(file, v.Line, "program %q: %s %s", p.Name, key, fmt.Sprintf(format, args...))
		}
		var err error
		switch key {
		case "service", "addr", "id", "standby-id", "ready", "live", "dir":
			var s string
			if s, err = scalarString(v); err != nil {
				return fail("%v", err)
			}
			switch key {
			case "service":
				p.Service = s
			case "addr":
				p.Addr = s
			case "id":
				p.ID = s
			case "standby-id":
				p.StandbyID = s
			case "ready":
				p.Ready = s
			case "live":
				p.Live = s
			case "dir":
				p.Dir = s
			}
		case "port", "standby-port":
			n, err := scalarInt(v)
			if err != nil {
				return fail("%v", err)
			}
			if n < 1 || n > 65535 {
				return fail("%d: want a port between 1 and 65535", n)
			}
			if key == "port" {
				p.Port = n
			} else {
				p.StandbyPort = n
			}
		case "budget", "recycle-after":
			s, err := scalarString(v)
			if err != nil {
				return fail("%v", err)
			}
			d, err := time.ParseDuration(s)
			if err != nil || d < 0 || (key == "budget" && d == 0) {
				return fail("%q: want a positive duration such as 30s or 24h", s)
			}
			if key == "budget" {
				p.Budget = d
			} else {
				p.RecycleAfter = d
			}
		case "conn-wait":
			s, err := scalarString(v)
			if err != nil {
				return fail("%v", err)
			}
			d, err := time.ParseDuration(s)
			if err != nil || d < 0 {
				return fail("%q: want a duration of 0 or more, such as 250ms (0: no wait for connections)", s)
			}
			p.ConnWait, p.ConnWaitSet = d, true
		case "recycle-rss":
			s, err := scalarString(v)
			if err != nil {
				return fail("%v", err)
			}
			if p.RecycleRSS, err = parseSize(s); err != nil {
				return fail("%v", err)
			}
		case "standby":
			if v.Kind != yaml.ScalarNode || v.Tag != "!!bool" {
				return fail("%s: want true or false", scalarText(v))
			}
			p.Standby = v.Value == "true" || v.Value == "True" || v.Value == "TRUE"
		case "command":
			if p.Command, err = parseCommand(v); err != nil {
				return fail("%v", err)
			}
		case "env":
			if p.Env, err = parseEnv(v); err != nil {
				return fail("%v", err)
			}
		}
		return nil
	})
	if err != nil {
		return p, err
	}
	for _, key := range []string{"port", "command"} {
		if _, ok := p.lines[key]; !ok {
			return p, configError(file, name.Line, "program %q: missing %s; every program needs port and command", p.Name, key)
		}
	}
	if err := p.finish(); err != nil {
		var fe *fieldError
		if errors.As(err, &fe) {
			return p, configError(file, p.lineOf(fe.key), "program %q: %s", p.Name, fe.render(""))
		}
		return p, configError(file, p.line, "program %q: %v", p.Name, err)
	}
	return p, nil
}

// lineOf is the line of key's value, or of the program's name when the key
// was not written (a default).
func (p *programConfig) lineOf(key string) int {
	if l, ok := p.lines[key]; ok {
		return l
	}
	if key == "standby-port" || key == "standby-id" {
		if l, ok := p.lines["port"]; ok {
			return l // derived from port
		}
	}
	return p.line
}

// scalarString is a scalar's text. Numbers and booleans are taken as
// written; null and collections are refused.
func scalarString(v *yaml.Node) (string, error) {
	if v.Kind != yaml.ScalarNode {
		return "", fmt.Errorf("is a %s; want a single value", kindName(v))
	}
	if v.Tag == "!!null" {
		return "", errors.New("is empty; give a value or remove the key")
	}
	return v.Value, nil
}

func scalarInt(v *yaml.Node) (int, error) {
	s, err := scalarString(v)
	if err != nil {
		return 0, err
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		return 0, fmt.Errorf("%q: want a whole number", scalarText(v))
	}
	return n, nil
}

// stringList reads a list of single values.
func stringList(file, key string, v *yaml.Node) ([]string, error) {
	if v.Kind != yaml.SequenceNode {
		return nil, configError(file, v.Line, "%s: want a list such as [consul://127.0.0.1:8500], got a %s", key, kindName(v))
	}
	var out []string
	for _, item := range v.Content {
		item = resolve(item)
		s, err := scalarString(item)
		if err != nil {
			return nil, configError(file, item.Line, "%s: an item %v", key, err)
		}
		out = append(out, s)
	}
	return out, nil
}

// parseCommand reads an argv list. A bare {port} in YAML is a mapping, so
// it gets its own hint.
func parseCommand(v *yaml.Node) ([]string, error) {
	if v.Kind != yaml.SequenceNode {
		return nil, fmt.Errorf("is a %s; want a list such as [./web, --listen, \"127.0.0.1:{port}\"] (no shell runs it)", kindName(v))
	}
	if len(v.Content) == 0 {
		return nil, errors.New("is empty; give the program to run and its arguments")
	}
	var argv []string
	for i, item := range v.Content {
		item = resolve(item)
		if item.Kind == yaml.MappingNode && len(item.Content) == 2 && item.Content[0].Value == "port" {
			return nil, fmt.Errorf("item %d is a mapping: YAML reads an unquoted {port} as one; write \"{port}\" in quotes", i+1)
		}
		s, err := scalarString(item)
		if err != nil {
			return nil, fmt.Errorf("item %d %v", i+1, err)
		}
		if i == 0 && s == "" {
			return nil, errors.New("item 1 is empty; name the program to run")
		}
		argv = append(argv, s)
	}
	return argv, nil
}

// parseEnv reads a mapping of variable names to values. Values are never
// quoted in errors: they may hold secrets.
func parseEnv(v *yaml.Node) ([]string, error) {
	if v.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("is a %s; want a mapping such as {GOMAXPROCS: \"2\"}", kindName(v))
	}
	var env []string
	seen := map[string]bool{}
	for i := 0; i+1 < len(v.Content); i += 2 {
		k, val := resolve(v.Content[i]), resolve(v.Content[i+1])
		if k.Kind != yaml.ScalarNode || k.Value == "" || strings.ContainsAny(k.Value, "=\x00") {
			return nil, fmt.Errorf("variable name %q (line %d): want a name without '='", scalarText(k), k.Line)
		}
		if seen[k.Value] {
			return nil, fmt.Errorf("variable %s appears twice (line %d)", k.Value, k.Line)
		}
		seen[k.Value] = true
		if val.Kind != yaml.ScalarNode {
			return nil, fmt.Errorf("variable %s (line %d): its value is a %s; want a single value", k.Value, val.Line, kindName(val))
		}
		value := val.Value
		if val.Tag == "!!null" {
			value = ""
		}
		if strings.ContainsRune(value, 0) {
			return nil, fmt.Errorf("variable %s (line %d): its value holds a NUL byte", k.Value, val.Line)
		}
		env = append(env, k.Value+"="+value)
	}
	return env, nil
}

// checkAcross checks what no program can check alone: every port (first
// and second copies) and every instance ID appears once on the host.
func checkAcross(file string, progs []programConfig) error {
	type owner struct {
		prog, key string
		line      int
	}
	ports := map[int]owner{}
	ids := map[string]owner{}
	for i := range progs {
		p := &progs[i]
		for _, f := range []struct {
			key  string
			port int
		}{{"port", p.Port}, {"standby-port", p.StandbyPort}} {
			if f.port == 0 {
				continue
			}
			if o, dup := ports[f.port]; dup {
				return configError(file, p.lineOf(f.key), "program %q: %s %d is already the %s of program %q (line %d); give every program its own ports",
					p.Name, f.key, f.port, o.key, o.prog, o.line)
			}
			ports[f.port] = owner{p.Name, f.key, p.lineOf(f.key)}
		}
		for _, f := range []struct{ key, id string }{{"id", p.ID}, {"standby-id", p.StandbyID}} {
			if f.id == "" {
				continue
			}
			if o, dup := ids[f.id]; dup {
				return configError(file, p.lineOf(f.key), "program %q: instance ID %q is already the %s of program %q (line %d); IDs must differ",
					p.Name, f.id, o.key, o.prog, o.line)
			}
			ids[f.id] = owner{p.Name, f.key, p.lineOf(f.key)}
		}
	}
	return nil
}
