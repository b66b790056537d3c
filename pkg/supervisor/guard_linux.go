// Linux only: the guard backs up Pdeathsig (process_linux.go) and cgroups (tree_linux.go), and runs /proc/self/exe.

package supervisor

import (
	"os"
	"os/exec"
	"os/signal"
	"syscall"
)

// guardExe is the program run as the guard; a variable for tests.
var guardExe = "/proc/self/exe"

func init() {
	if os.Getenv(guardEnv) == "" {
		return
	}
	_ = os.Unsetenv(guardEnv)
	var st syscall.Stat_t
	if len(os.Args) != 2 || os.Args[1] != guardArg ||
		syscall.Fstat(guardFD, &st) != nil || st.Mode&syscall.S_IFMT != syscall.S_IFIFO {
		return // the variable leaked into an ordinary run of the program
	}
	// Stay alive through a terminal's signals and a SIGTERM to
	// everything: only end of file, or SIGKILL, ends the guard.
	signal.Ignore(syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	guardLoop(os.NewFile(guardFD, "supervisor-guard"), syscall.Kill, func(dir string) error {
		return emptyCgroup(dir, cgroupEmptyTimeout)
	})
	os.Exit(0)
}

// startGuard starts the guard process, or returns nil if it cannot.
func startGuard() *guard {
	r, w, err := os.Pipe() // close-on-exec, both ends
	if err != nil {
		return nil
	}
	cmd := &exec.Cmd{
		Path:        guardExe,
		Args:        []string{os.Args[0], guardArg},
		Env:         append(os.Environ(), guardEnv+"=1"),
		Dir:         "/",
		ExtraFiles:  []*os.File{r}, // becomes guardFD
		SysProcAttr: &syscall.SysProcAttr{Setpgid: true},
		// Stdin, Stdout and Stderr are /dev/null: the guard holds no
		// terminal and no pipe that someone reads to its end.
	}
	err = startTracked(cmd)
	r.Close()
	if err != nil {
		w.Close()
		return nil
	}
	return &guard{cmd: cmd, w: w}
}
