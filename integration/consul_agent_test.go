package integration

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// privateConsul is a dev agent of the test's own, on free ports, for tests
// that stop or restart the server and must not disturb the shared one.
type privateConsul struct {
	t      *testing.T
	bin    string
	ports  [4]int // http, server, serf lan, serf wan
	cmd    *exec.Cmd
	exited chan error // receives cmd.Wait's result
	log    string
}

func consulBinary(t *testing.T) string {
	t.Helper()
	if b := os.Getenv("CONSUL_BIN"); b != "" {
		return b
	}
	out, err := exec.Command("../integration/scripts/install-consul.sh").Output()
	if err != nil {
		msg := fmt.Sprintf("consul binary not available (%v); run integration/scripts/install-consul.sh", err)
		if required() {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return strings.TrimSpace(string(out))
}

func startPrivateConsul(t *testing.T) *privateConsul {
	t.Helper()
	p := &privateConsul{t: t, bin: consulBinary(t), log: filepath.Join(t.TempDir(), "consul.log")}
	for k := range p.ports {
		p.ports[k] = freePort(t)
	}
	p.start()
	t.Cleanup(p.stop)
	return p
}

func (p *privateConsul) addr() string { return "127.0.0.1:" + strconv.Itoa(p.ports[0]) }

func (p *privateConsul) start() {
	t := p.t
	t.Helper()
	logf, err := os.OpenFile(p.log, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	p.cmd = exec.Command(p.bin, "agent", "-dev", "-client", "127.0.0.1", "-bind", "127.0.0.1",
		"-http-port", strconv.Itoa(p.ports[0]), "-server-port", strconv.Itoa(p.ports[1]),
		"-serf-lan-port", strconv.Itoa(p.ports[2]), "-serf-wan-port", strconv.Itoa(p.ports[3]),
		"-dns-port", "-1", "-grpc-port", "-1", "-grpc-tls-port", "-1", "-log-level", "warn")
	p.cmd.Stdout, p.cmd.Stderr = logf, logf
	p.cmd.SysProcAttr = childAttr()
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start consul: %v", err)
	}
	p.exited = make(chan error, 1)
	go func(cmd *exec.Cmd, exited chan error) { exited <- cmd.Wait() }(p.cmd, p.exited)
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+p.addr()+"/v1/status/leader", nil)
		resp, err := http.DefaultClient.Do(req)
		cancel()
		if err == nil {
			var b [64]byte
			n, _ := resp.Body.Read(b[:])
			resp.Body.Close()
			if strings.Contains(string(b[:n]), ":") {
				return
			}
		}
		select {
		case err := <-p.exited:
			p.exited <- err
			tail, _ := os.ReadFile(p.log)
			t.Fatalf("private consul exited during start-up (%v); log:\n%s", err, tail)
		default:
		}
		if time.Now().After(deadline) {
			tail, _ := os.ReadFile(p.log)
			t.Fatalf("private consul not ready on %s after 30s; log:\n%s", p.addr(), tail)
		}
		time.Sleep(100 * time.Millisecond) // polling a child process's readiness; nothing to wait on
	}
}

func (p *privateConsul) stop() {
	if p.cmd == nil || p.cmd.Process == nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
	p.cmd = nil
}

func (p *privateConsul) restart() {
	p.stop()
	p.start()
}

// kill ends the agent with SIGKILL, as a crash would, and waits until it
// has exited. A dev agent keeps its state in memory only, so start then
// brings back an agent that has lost every registration, under a new node
// ID.
func (p *privateConsul) kill() {
	if p.cmd == nil || p.cmd.Process == nil {
		return
	}
	_ = p.cmd.Process.Kill()
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
		p.t.Errorf("private consul (pid %d) still running 10s after SIGKILL", p.cmd.Process.Pid)
	}
	p.cmd = nil
}
