//go:build linux

package conncount

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"syscall"
	"testing"
	"time"
	"unsafe"
)

// The busy host BenchmarkPoll20kSockets polls: the app's port holds a few
// connections among 20,000 other sockets.
const (
	benchPort       = 8080
	benchConns      = 10
	benchNoisePorts = 20     // 9000 up
	benchNoiseConns = 10_000 // 20,000 sockets, both ends
)

// BenchmarkPoll20kSockets times one poll (Counter.Activity) of a port with
// 10 connections in a network namespace of the benchmark's own that holds
// 10,000 more loopback connections to 20 other ports: the kernel filter
// against the unfiltered dump sifted here, the way every poll went before
// it, and the filter in a request per address family against one request
// for both (TCPDIAG_GETSOCK), which walks the kernel's socket hash once
// rather than twice. Besides the wall time (ns/op) it reports the polling
// thread's CPU time, user and kernel (cpu-ns/op), which other load on the
// machine inflates less. It needs to create a network namespace (CAP_SYS_ADMIN)
// and skips where it cannot.
func BenchmarkPoll20kSockets(b *testing.B) {
	ns := startBenchNetns(b)
	for _, bm := range []struct {
		name      string
		filter    bool
		perFamily bool
	}{
		{name: "unfiltered", filter: false},
		{name: "kernel-filter-per-family", filter: true, perFamily: true},
		{name: "kernel-filter", filter: true},
	} {
		b.Run(bm.name, func(b *testing.B) {
			b.ReportAllocs()
			if bm.perFamily {
				// How every filtered poll went before the compat
				// request: one walk per family. Benchmarks run one at
				// a time, so the switch is the package's to flip.
				noCompatDump.Store(true)
				defer noCompatDump.Store(false)
			} else if noCompatDump.Load() {
				b.Fatal("this kernel refused the compat request (TCPDIAG_GETSOCK): the polls are per family")
			}
			cpu, err := ns.poll(bm.filter, b.N)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/op")
		})
	}
}

// benchNetns is a goroutine locked to a thread in a network namespace of its
// own, holding the sockets, that polls on request. A network namespace is a
// thread's, and readDiag reads its caller thread's, so the polls run there
// too; b.Run's goroutines hand it b.N and wait, one round trip per run.
type benchNetns struct {
	reqs chan benchPoll
}

type benchPoll struct {
	filter bool
	n      int
	done   chan benchDone
}

type benchDone struct {
	cpu time.Duration // the polling thread's, user and kernel
	err error
}

// startBenchNetns sets the namespace up, or skips b where it cannot be.
// Cleanup closes the sockets; the namespace goes with its thread.
func startBenchNetns(b *testing.B) *benchNetns {
	b.Helper()
	ns := &benchNetns{reqs: make(chan benchPoll)}
	type setup struct {
		skip string
		err  error
	}
	ready := make(chan setup, 1)
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		// Never unlocked: the thread, which is in the namespace, ends with
		// the goroutine rather than go back to the scheduler.
		runtime.LockOSThread()
		var fds []int
		defer func() {
			for _, fd := range fds {
				syscall.Close(fd)
			}
		}()
		skip, err := fillBenchNetns(&fds)
		ready <- setup{skip, err}
		if skip != "" || err != nil {
			return
		}
		for r := range ns.reqs {
			r.done <- benchPolls(r.filter, r.n)
		}
	}()
	s := <-ready
	if s.skip != "" {
		b.Skip(s.skip)
	}
	if s.err != nil {
		b.Fatal(s.err)
	}
	b.Cleanup(func() {
		close(ns.reqs)
		<-exited
	})
	return ns
}

// poll has the namespace's thread poll n times and returns the CPU time
// that took.
func (ns *benchNetns) poll(filter bool, n int) (time.Duration, error) {
	done := make(chan benchDone)
	ns.reqs <- benchPoll{filter: filter, n: n, done: done}
	d := <-done
	return d.cpu, d.err
}

// benchPolls polls the app's port n times, as WaitIdle does, on the calling
// thread, which must be locked.
func benchPolls(filter bool, n int) benchDone {
	c, err := New(benchPort)
	if err != nil {
		return benchDone{err: err}
	}
	if !filter {
		c.noFilter.Store(true)
	}
	start, err := threadCPU()
	if err != nil {
		return benchDone{err: err}
	}
	for range n {
		a, err := c.Activity(context.Background())
		if err != nil {
			return benchDone{err: err}
		}
		if a.Established != benchConns || !a.Timed {
			return benchDone{err: fmt.Errorf("want %d established connections, timed, got %+v", benchConns, a)}
		}
	}
	end, err := threadCPU()
	if err != nil {
		return benchDone{err: err}
	}
	if filter && c.noFilter.Load() {
		return benchDone{err: errors.New("the kernel refused the port filter: the two polls are the same")}
	}
	return benchDone{cpu: end - start}
}

// threadCPU returns the calling thread's CPU time so far, user and kernel.
func threadCPU() (time.Duration, error) {
	const rusageThread = 1 // RUSAGE_THREAD, which package syscall lacks on Linux
	var ru syscall.Rusage
	if err := syscall.Getrusage(rusageThread, &ru); err != nil {
		return 0, fmt.Errorf("getrusage: %w", err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), nil
}

// fillBenchNetns moves the calling thread, which must be locked, into a new
// network namespace and opens the benchmark's sockets there, appending
// their files to fds. It returns why the benchmark cannot run here, if it
// cannot.
func fillBenchNetns(fds *[]int) (skip string, err error) {
	// The other ports' connections stay in their listeners' accept queues:
	// established sockets in the same table all the same, and the process
	// holds about 10,000 files, not 20,000 (often the hard limit).
	need := uint64(benchNoiseConns + benchNoisePorts + 1 + 2*benchConns + 100)
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return "", fmt.Errorf("getrlimit: %w", err)
	}
	if rl.Cur < need && rl.Max >= need {
		rl.Cur = need
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
			return "", fmt.Errorf("setrlimit: %w", err)
		}
	}
	if rl.Cur < need {
		return fmt.Sprintf("needs %d open files, RLIMIT_NOFILE allows %d (raise ulimit -Hn)", need, rl.Max), nil
	}
	if err := syscall.Unshare(syscall.CLONE_NEWNET); err != nil {
		return fmt.Sprintf("cannot create a network namespace (needs CAP_SYS_ADMIN): %v", err), nil
	}
	if err := loUp(); err != nil {
		return "", err
	}
	if _, err := readDiag(context.Background(), benchPort, nil, func(row) {}); errors.Is(err, errNoDiag) {
		return fmt.Sprintf("sock_diag is not usable here: %v", err), nil
	}

	listen := func(port int) (int, error) {
		fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
		if err != nil {
			return 0, fmt.Errorf("socket: %w", err)
		}
		*fds = append(*fds, fd)
		if err := syscall.Bind(fd, &syscall.SockaddrInet4{Port: port, Addr: [4]byte{127, 0, 0, 1}}); err != nil {
			return 0, fmt.Errorf("bind 127.0.0.1:%d: %w", port, err)
		}
		// Above the connections each port gets: a full accept queue
		// drops handshakes.
		return fd, syscall.Listen(fd, 1024)
	}
	dial := func(port int) error {
		fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("socket: %w", err)
		}
		*fds = append(*fds, fd)
		sa := &syscall.SockaddrInet4{Port: port, Addr: [4]byte{127, 0, 0, 1}}
		for {
			// Blocking: over loopback the handshake is done on return.
			switch err := syscall.Connect(fd, sa); {
			case errors.Is(err, syscall.EINTR):
				continue // resumes the handshake under way
			case errors.Is(err, syscall.EISCONN):
				return nil // an interrupted connect that finished
			case err != nil:
				return fmt.Errorf("connect 127.0.0.1:%d: %w", port, err)
			}
			return nil
		}
	}

	for p := range benchNoisePorts {
		if _, err := listen(9000 + p); err != nil {
			return "", err
		}
	}
	for i := range benchNoiseConns {
		if err := dial(9000 + i%benchNoisePorts); err != nil {
			return "", fmt.Errorf("connection %d of %d: %w", i+1, benchNoiseConns, err)
		}
	}
	app, err := listen(benchPort)
	if err != nil {
		return "", err
	}
	for range benchConns {
		if err := dial(benchPort); err != nil {
			return "", err
		}
		fd, _, err := syscall.Accept4(app, syscall.SOCK_CLOEXEC)
		for errors.Is(err, syscall.EINTR) {
			fd, _, err = syscall.Accept4(app, syscall.SOCK_CLOEXEC)
		}
		if err != nil {
			return "", fmt.Errorf("accept on 127.0.0.1:%d: %w", benchPort, err)
		}
		*fds = append(*fds, fd)
	}

	// Every socket the benchmark meant is in the table.
	total := 0
	if _, err := readDiag(context.Background(), 0, nil, func(row) { total++ }); err != nil {
		return "", err
	}
	if want := 2*(benchNoiseConns+benchConns) + benchNoisePorts + 1; total != want {
		return "", fmt.Errorf("want %d sockets in the namespace (connections' both ends and listeners), sock_diag shows %d", want, total)
	}
	return "", nil
}

// loUp brings the namespace's loopback interface up, as `ip link set lo up`
// does, with the SIOCSIFFLAGS ioctl on struct ifreq (name, then flags).
func loUp() error {
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_DGRAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socket: %w", err)
	}
	defer syscall.Close(fd)
	var ifr [40]byte // sizeof(struct ifreq)
	copy(ifr[:syscall.IFNAMSIZ], "lo")
	ioctl := func(req uintptr) error {
		if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, uintptr(fd), req, uintptr(unsafe.Pointer(&ifr[0]))); e != 0 {
			return e
		}
		return nil
	}
	if err := ioctl(syscall.SIOCGIFFLAGS); err != nil {
		return fmt.Errorf("SIOCGIFFLAGS lo: %w", err)
	}
	flags := hostOrder.Uint16(ifr[syscall.IFNAMSIZ:]) | syscall.IFF_UP
	hostOrder.PutUint16(ifr[syscall.IFNAMSIZ:], flags)
	if err := ioctl(syscall.SIOCSIFFLAGS); err != nil {
		return fmt.Errorf("SIOCSIFFLAGS lo up: %w", err)
	}
	return nil
}
