package nacos

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"

	"github.com/nacos-group/nacos-sdk-go/v2/clients"
	"github.com/nacos-group/nacos-sdk-go/v2/common/logger"
	"github.com/nacos-group/nacos-sdk-go/v2/vo"

	"github.com/lameduck/lameduck/internal/logthrottle"
)

// Working around nacos-sdk-go v2.3.2, so that a closed client leaves nothing
// behind and an outage does not flood the terminal:
//
//   - The SDK logs through one process-wide logger (common/logger), and
//     NewNamingClient replaces it with a zap logger writing through
//     lumberjack, whose file-maintenance goroutine never ends once the file
//     is first written. We put sdkLog back in its place as soon as
//     NewNamingClient returns. The SDK writes its file only if it logs an
//     error inside NewNamingClient: with credentials and a server that
//     cannot be reached, its first login does. That file is under the
//     registry's data directory (LogDir; a private one is removed by
//     Close), but lumberjack's goroutine and open file stay for the life of
//     the process; no setting of the SDK prevents it. The SDK retries the
//     login in the background, so its error still reaches sdkLog.
//   - sdkLog sends the SDK's warnings and errors to slog's default logger
//     through a logthrottle: one line per distinct message, then one count
//     of its repeats per 10s while they last, Go stack traces (the SDK logs
//     errors with %+v) cut off, secrets redacted. There is one sdkLog for
//     the process, as there is one SDK logger: every Registry installs the
//     same value, under sdkMu, so several registries share one throttle and
//     one list of secrets, and making a second cannot undo the first's
//     setting. The SDK's messages name their client (a connection id) or
//     server, not our registry.
//   - Every client starts a UDP "push receiver" (used only by the HTTP
//     protocol, never by gRPC) on a random port in 54951-55950, on every
//     interface, and CloseClient leaves its goroutine blocked in a read. We
//     note the port when the client is made and, after CloseClient, send it
//     one empty datagram so the goroutine sees its cancelled context and
//     ends. The socket cannot be kept off non-loopback interfaces without
//     changing the SDK.
//   - The SDK logs in over HTTP with http.DefaultTransport; Close drops that
//     transport's idle connections, whose goroutines would otherwise linger
//     for its 90s idle timeout.

// sdkMu serialises client creation: the logger is process-wide, and the push
// receiver is found by comparing this process's UDP sockets around it.
var sdkMu sync.Mutex

// newSDKClient makes a naming client and returns the UDP ports it opened.
func newSDKClient(p vo.NacosClientParam, secrets ...string) (client, []int, error) {
	sdkMu.Lock()
	defer sdkMu.Unlock()
	before := udpSockets()
	c, err := clients.NewNamingClient(p)
	sdkLog.addSecrets(secrets...)
	logger.SetLogger(sdkLog)
	if err != nil {
		return nil, nil, err
	}
	var ports []int
	for inode, port := range udpSockets() {
		if _, old := before[inode]; !old {
			ports = append(ports, port)
		}
	}
	return c, ports, nil
}

// wakePushReceivers sends one empty datagram to each port, after
// CloseClient, so the receiver goroutines notice they are done.
func wakePushReceivers(ports []int) {
	for _, port := range ports {
		conn, err := net.Dial("udp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			continue
		}
		_, _ = conn.Write(nil)
		_ = conn.Close()
	}
}

// udpSockets maps the inodes of this process's UDP sockets to their local
// ports, from /proc (Linux). Elsewhere it returns nothing and the receiver
// goroutine is left to the SDK.
func udpSockets() map[string]int {
	mine := map[string]bool{}
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return nil
	}
	for _, fd := range fds {
		target, err := os.Readlink("/proc/self/fd/" + fd.Name())
		if err == nil && strings.HasPrefix(target, "socket:[") {
			mine[strings.TrimSuffix(strings.TrimPrefix(target, "socket:["), "]")] = true
		}
	}
	out := map[string]int{}
	for _, table := range []string{"/proc/self/net/udp", "/proc/self/net/udp6"} {
		scanUDPTable(table, mine, out)
	}
	return out
}

// scanUDPTable adds to out the local port of each socket of table whose
// inode is in mine. It streams the table, which lists every UDP socket in
// the network namespace, however many.
func scanUDPTable(table string, mine map[string]bool, out map[string]int) {
	file, err := os.Open(table)
	if err != nil {
		return
	}
	defer file.Close()
	sc := bufio.NewScanner(file)
	sc.Scan() // the header
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 10 || !mine[f[9]] {
			continue
		}
		i := strings.LastIndexByte(f[1], ':')
		port, err := strconv.ParseUint(f[1][i+1:], 16, 16)
		if err == nil {
			out[f[9]] = int(port)
		}
	}
}

// sdkLogger is the SDK's logger: warnings and errors, with every known
// secret replaced, through a logthrottle to slog's default logger at the
// time of each line. Info and debug lines are dropped: the SDK logs every
// push at info.
type sdkLogger struct {
	mu      sync.RWMutex
	secrets []string
	th      *logthrottle.Throttle
}

var sdkLog = newSDKLogger(slog.Default)

// newSDKLogger returns a logger writing to the slog.Logger that to returns
// at the time of each line.
func newSDKLogger(to func() *slog.Logger, opts ...logthrottle.Option) *sdkLogger {
	l := &sdkLogger{}
	l.th = logthrottle.New(func(line logthrottle.Line) {
		args := []any{"component", "nacos-sdk"}
		if line.Repeated > 0 {
			args = append(args, "repeated", line.Repeated, "within", line.Within)
		}
		to().Log(context.Background(), line.Level, line.Msg, args...)
	}, opts...)
	return l
}

func (l *sdkLogger) addSecrets(s ...string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, v := range s {
		if v != "" {
			l.secrets = append(l.secrets, v)
		}
	}
}

func (l *sdkLogger) emit(level slog.Level, msg string) {
	if strings.Contains(msg, "the client connection is closing") {
		return // the SDK's own gRPC connection, reporting its Close as an error
	}
	l.mu.RLock()
	for _, s := range l.secrets {
		msg = strings.ReplaceAll(msg, s, "REDACTED")
	}
	l.mu.RUnlock()
	l.th.Log(level, msg)
}

// flush passes on the repeats counted so far, so that none is lost when a
// Registry closes (and the process, often, ends).
func (l *sdkLogger) flush() { l.th.Flush() }

func (l *sdkLogger) Info(args ...any)                  {}
func (l *sdkLogger) Debug(args ...any)                 {}
func (l *sdkLogger) Infof(format string, args ...any)  {}
func (l *sdkLogger) Debugf(format string, args ...any) {}
func (l *sdkLogger) Warn(args ...any)                  { l.emit(slog.LevelWarn, fmt.Sprint(args...)) }
func (l *sdkLogger) Error(args ...any)                 { l.emit(slog.LevelError, fmt.Sprint(args...)) }
func (l *sdkLogger) Warnf(format string, args ...any) {
	l.emit(slog.LevelWarn, fmt.Sprintf(format, args...))
}
func (l *sdkLogger) Errorf(format string, args ...any) {
	l.emit(slog.LevelError, fmt.Sprintf(format, args...))
}
