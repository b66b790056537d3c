package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"
)

// machine is what the results were measured on.
type machine struct {
	CPUs          int    `json:"cpus"`
	CPUModel      string `json:"cpu_model"`
	MemoryGiB     string `json:"memory_gib"`
	Kernel        string `json:"kernel"`
	Go            string `json:"go"`
	ConsulVersion string `json:"consul"`
	NacosVersion  string `json:"nacos"`
}

func (m machine) String() string {
	return fmt.Sprintf("%d CPUs (%s), %s GiB, Linux %s, %s, Consul %s, Nacos %s",
		m.CPUs, m.CPUModel, m.MemoryGiB, m.Kernel, m.Go, m.ConsulVersion, m.NacosVersion)
}

func describeMachine(ctx context.Context, cfg *config) machine {
	m := machine{CPUs: runtime.NumCPU(), Go: runtime.Version(), CPUModel: "unknown", MemoryGiB: "unknown",
		Kernel: "unknown", ConsulVersion: "not used", NacosVersion: "not used"}
	if v := procField("/proc/cpuinfo", "model name"); v != "" {
		m.CPUModel = v
	}
	if v := procField("/proc/meminfo", "MemTotal"); v != "" {
		if kb, err := strconv.ParseFloat(strings.TrimSuffix(v, " kB"), 64); err == nil {
			m.MemoryGiB = strconv.FormatFloat(kb/(1<<20), 'f', 1, 64)
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	for _, r := range cfg.registries {
		switch r {
		case "consul":
			var self struct{ Config struct{ Version string } }
			if getJSON(ctx, "http://"+cfg.consulAgent()+"/v1/agent/self", &self) == nil {
				m.ConsulVersion = self.Config.Version
			}
		case "nacos":
			var state struct{ Data struct{ Version string } }
			if getJSON(ctx, "http://"+cfg.nacosRegNodes()[0]+"/nacos/v3/admin/core/state", &state) == nil {
				m.NacosVersion = state.Data.Version
			}
		}
	}
	return m
}

// procField returns the value of the first "key: value" line of a /proc
// file.
func procField(path, key string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(k) == key {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

func getJSON(ctx context.Context, url string, v any) error {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s answered %s", url, resp.Status)
	}
	return json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(v)
}

// checkServers fails unless every registry asked for answers (in a
// cluster: every member), with the command that starts it.
func checkServers(ctx context.Context, cfg *config) error {
	for _, r := range cfg.registries {
		var urls []string
		switch r {
		case "consul":
			for _, a := range append(slices.Clone(cfg.consulServers), cfg.consulClients...) {
				urls = append(urls, "http://"+a+"/v1/status/leader")
			}
			if cfg.topology != topoCluster {
				urls = []string{"http://" + cfg.consulAddr + "/v1/status/leader"}
			}
		case "nacos":
			for _, a := range cfg.nacosRegNodes() {
				urls = append(urls, "http://"+a+"/nacos/v3/admin/core/state/readiness")
			}
		}
		script := r
		if cfg.topology == topoCluster {
			script += "-cluster"
		}
		for _, url := range urls {
			var ignored any
			if err := getJSON(ctx, url, &ignored); err != nil {
				return fmt.Errorf("%s is not ready (%v); start it with integration/scripts/start-%s.sh or `make servers`", script, err, script)
			}
		}
	}
	return nil
}
