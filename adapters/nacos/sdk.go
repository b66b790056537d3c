package nacos

import (
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
)

// Working around nacos-sdk-go v2.3.2, so that a closed client leaves nothing
// behind:
//
//   - NewNamingClient installs a process-wide zap logger writing through
//     lumberjack, whose file-maintenance goroutine never ends. We put our own
//     logger (log/slog, warnings and errors only, secrets redacted) back in
//     its place at once, so the SDK's file is never opened.
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
		data, err := os.ReadFile(table)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(data), "\n")[1:] {
			f := strings.Fields(line)
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
	return out
}

// sdkLogger sends the SDK's warnings and errors to slog's default logger,
// with every known secret replaced. Info and debug lines are dropped: the
// SDK logs every push at info.
type sdkLogger struct {
	mu      sync.RWMutex
	secrets []string
}

var sdkLog = &sdkLogger{}

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
	slog.Default().Log(context.Background(), level, msg, "component", "nacos-sdk")
}

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
