// Command child is the supervisor tests' misbehaving service. It listens on
// -addr, answers /healthz, and misbehaves on command:
//
//	-mode=serve        serve; on SIGTERM shut down gracefully and exit 0
//	-mode=ignore-term  serve; ignore SIGTERM (only SIGKILL stops it)
//	-mode=crash        exit -code at once, before listening
//	-mode=exit0        exit 0 at once, before listening
//	-mode=sleep        sleep for 5 minutes (a descendant that lingers)
//	-mode=fork-orphan  start a -mode=sleep descendant in a session of its own and exit
//
// Before serving, -env-out=FILE writes the environment to FILE, one
// variable a line; -grandchild starts a -mode=sleep grandchild in a
// session of its own (setsid) that holds the child's stdout and stderr;
// -orphan starts one through a -mode=fork-orphan middle process that exits
// at once, so the sleeper is an orphan while the child still runs. Each
// sleeper's PID is printed as "grandchild pid N" or "orphan pid N".
//
// and over HTTP: GET /crash exits with -code, GET /exit0 exits 0, GET /hang
// makes /healthz hang until the client gives up, GET /leak?mb=N allocates
// and keeps N MiB (touched, so it counts in RSS), GET /slow?ms=N answers
// after N milliseconds, and GET /pid answers the process ID.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "listen address")
	mode := flag.String("mode", "serve", "serve, ignore-term, crash, exit0")
	code := flag.Int("code", 3, "exit code for crashes")
	envOut := flag.String("env-out", "", "write the environment to this file")
	grandchild := flag.Bool("grandchild", false, "start a setsid grandchild that holds stdout and sleeps")
	orphan := flag.Bool("orphan", false, "start a setsid sleeper through a middle process that exits")
	flag.Parse()

	switch *mode {
	case "sleep":
		time.Sleep(5 * time.Minute)
		os.Exit(0)
	case "fork-orphan":
		pid := spawn("sleep")
		fmt.Printf("orphan pid %d\n", pid)
		os.Exit(0)
	case "crash":
		fmt.Fprintln(os.Stderr, "crashing")
		os.Exit(*code)
	case "exit0":
		fmt.Println("done")
		os.Exit(0)
	}
	if *envOut != "" {
		if err := os.WriteFile(*envOut, []byte(strings.Join(os.Environ(), "\n")+"\n"), 0o600); err != nil {
			fmt.Fprintln(os.Stderr, "env-out:", err)
			os.Exit(2)
		}
	}
	if *grandchild {
		fmt.Printf("grandchild pid %d\n", spawn("sleep"))
	}
	if *orphan {
		cmd := exec.Command(os.Args[0], "-mode=fork-orphan")
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		if err := cmd.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "orphan:", err)
			os.Exit(2)
		}
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM)

	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "listen:", err)
		os.Exit(2)
	}
	var hang atomic.Bool
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		if hang.Load() {
			<-r.Context().Done()
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/crash", func(http.ResponseWriter, *http.Request) { os.Exit(*code) })
	mux.HandleFunc("/exit0", func(http.ResponseWriter, *http.Request) { os.Exit(0) })
	mux.HandleFunc("/hang", func(w http.ResponseWriter, _ *http.Request) { hang.Store(true) })
	var leakMu sync.Mutex
	var leaked [][]byte
	mux.HandleFunc("/leak", func(w http.ResponseWriter, r *http.Request) {
		mb, err := strconv.Atoi(r.URL.Query().Get("mb"))
		if err != nil || mb <= 0 {
			http.Error(w, "want ?mb=N with N > 0", http.StatusBadRequest)
			return
		}
		b := make([]byte, mb<<20)
		for i := 0; i < len(b); i += 4096 {
			b[i] = 1 // touch every page, so it is resident
		}
		leakMu.Lock()
		leaked = append(leaked, b)
		leakMu.Unlock()
		fmt.Fprintln(w, "leaked", mb, "MiB")
	})
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		ms, _ := strconv.Atoi(r.URL.Query().Get("ms"))
		time.Sleep(time.Duration(ms) * time.Millisecond)
		fmt.Fprintln(w, "ok")
		fmt.Println("slow answered") // before the answer leaves: the order of the output is the order of events
	})
	mux.HandleFunc("/pid", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, os.Getpid()) })
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	fmt.Printf("listening on %s pid %d\n", ln.Addr(), os.Getpid())
	fmt.Fprint(os.Stdout, "partial line without newline")

	for range sigs {
		fmt.Println("\ngot SIGTERM")
		if *mode == "ignore-term" {
			continue
		}
		_ = srv.Shutdown(context.Background())
		os.Exit(0)
	}
}

// spawn starts this program in mode, in a session of its own, with this
// process's stdout and stderr, and returns its PID without waiting for it.
func spawn(mode string) int {
	cmd := exec.Command(os.Args[0], "-mode="+mode)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		fmt.Fprintln(os.Stderr, "spawn:", err)
		os.Exit(2)
	}
	return cmd.Process.Pid
}
