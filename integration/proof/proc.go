package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// proc is a child process: an instance of the demo service, `lameduck run`
// around one, or a `lameduck prestop` hook.
type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{} // closed once reaped
	exit int64         // mono time it was reaped
	err  error         // Wait's error (an *exec.ExitError for a non-zero exit)

	mu     sync.Mutex
	events []appEvent // JSON event lines from the library app's stdout
	stdout tail
	stderr tail
}

// appEvent is one protocol event the library app printed (see demosvc).
type appEvent struct {
	UnixNano  int64  `json:"t_unix_ns"`
	Kind      string `json:"kind"`
	Phase     string `json:"phase"`
	Registry  string `json:"registry,omitempty"`
	LatencyNS int64  `json:"latency_ns,omitempty"`
	InFlight  int64  `json:"in_flight"`
	Err       string `json:"err,omitempty"`
}

// childEnv is the harness's environment without LAMEDUCK_* variables (so a
// developer's LAMEDUCK_REGISTRY cannot change a command's mode), plus the
// registries' credentials.
func childEnv(cfg *config) []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "LAMEDUCK_") || strings.HasPrefix(kv, "NACOS_USERNAME=") ||
			strings.HasPrefix(kv, "NACOS_PASSWORD=") || strings.HasPrefix(kv, "CONSUL_HTTP_TOKEN=") {
			continue
		}
		env = append(env, kv)
	}
	env = append(env, "NACOS_USERNAME="+cfg.nacosUser, "NACOS_PASSWORD="+cfg.nacosPassword)
	if cfg.consulToken != "" {
		env = append(env, "CONSUL_HTTP_TOKEN="+cfg.consulToken)
	}
	return env
}

// startProc starts bin. The child is killed if the harness dies
// (Pdeathsig), and its output is kept: the last lines of each stream, and
// every JSON event line on stdout.
func startProc(cfg *config, name, bin string, args ...string) (*proc, error) {
	p := &proc{name: name, done: make(chan struct{})}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Env = childEnv(cfg)
	p.cmd.SysProcAttr = childAttr()
	outR, err := p.cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	p.cmd.Stderr = &p.stderr
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	read := make(chan struct{})
	go func() {
		defer close(read)
		p.readStdout(outR)
	}()
	go func() {
		<-read // Wait closes the pipe; read it all first
		p.err = p.cmd.Wait()
		p.exit = mono()
		close(p.done)
	}()
	return p, nil
}

func (p *proc) readStdout(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Bytes()
		var e appEvent
		if bytes.HasPrefix(line, []byte(`{"t_unix_ns"`)) && json.Unmarshal(line, &e) == nil {
			p.mu.Lock()
			p.events = append(p.events, e)
			p.mu.Unlock()
			continue
		}
		_, _ = p.stdout.Write(append(line, '\n'))
	}
	_, _ = io.Copy(io.Discard, r)
}

func (p *proc) appEvents() []appEvent {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]appEvent(nil), p.events...)
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// wait waits up to d for the process to exit and reports whether it did.
func (p *proc) wait(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-p.done:
		return true
	case <-t.C:
		return false
	}
}

func (p *proc) signal(s syscall.Signal) error {
	if p.exited() {
		return nil
	}
	err := p.cmd.Process.Signal(s)
	if errors.Is(err, os.ErrProcessDone) {
		return nil
	}
	return err
}

// kill ends the process with SIGKILL and reaps it.
func (p *proc) kill() {
	_ = p.signal(syscall.SIGKILL)
	<-p.done
}

// exitCode is the exit code, -1 if a signal ended it. Call it after done.
func (p *proc) exitCode() int { return p.cmd.ProcessState.ExitCode() }

// describe says how the process ended and what it last wrote, for errors.
func (p *proc) describe() string {
	state := "still running"
	if p.exited() {
		state = p.cmd.ProcessState.String()
	}
	return fmt.Sprintf("%s (%s); last output:\n%s%s", p.name, state, p.stdout.String(), p.stderr.String())
}

// tail keeps the last 8 KiB written to it.
type tail struct {
	mu sync.Mutex
	b  []byte
}

const tailMax = 8 << 10

func (t *tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if len(t.b) > tailMax {
		t.b = append(t.b[:0], t.b[len(t.b)-tailMax:]...)
	}
	return len(p), nil
}

func (t *tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.b)
}

// ports hands out loopback ports that nothing listens on and that this run
// has not handed out before: Nacos keeps an external disable of an endpoint
// for minutes after the instance is gone, so no endpoint is reused.
type ports struct {
	mu   sync.Mutex
	used map[int]bool
}

func (ps *ports) take() (int, error) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if ps.used == nil {
		ps.used = map[int]bool{}
	}
	for range 100 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, fmt.Errorf("find a free port on 127.0.0.1: %w", err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		if !ps.used[port] {
			ps.used[port] = true
			return port, nil
		}
	}
	return 0, errors.New("no unused free port on 127.0.0.1 after 100 tries")
}
