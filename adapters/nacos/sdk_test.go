package nacos

import (
	"bytes"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lameduck/lameduck/internal/clock"
	"github.com/lameduck/lameduck/internal/logthrottle"
)

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// The SDK's errors reach slog once per distinct message, redacted, without
// their stack, and a flush passes on the count held back.
func TestSDKLogger(t *testing.T) {
	t.Parallel()
	var buf syncBuffer
	lg := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{
		ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return a
		},
	}))
	l := newSDKLogger(func() *slog.Logger { return lg }, logthrottle.WithClock(clock.NewFake(time.Unix(0, 0))))
	l.addSecrets("pw-123", "")
	for i := range 5 {
		l.Errorf("login failed, password=%s, retryTimes=%d, error=%+v", "pw-123", i, "refused\nmain.f\n\t/src/main.go:12")
	}
	l.Info("pushed")                                       // dropped: info
	l.Error("rpc error: the client connection is closing") // dropped: the SDK's own Close
	l.Warn("fail to connect server, after trying 1 times")
	l.flush()

	want := []string{
		`level=ERROR msg="login failed, password=REDACTED, retryTimes=0, error=refused" component=nacos-sdk`,
		`level=WARN msg="fail to connect server, after trying 1 times" component=nacos-sdk`,
		`level=ERROR msg="login failed, password=REDACTED, retryTimes=0, error=refused" component=nacos-sdk repeated=4 within=0s`,
	}
	got := strings.Split(strings.TrimRight(buf.String(), "\n"), "\n")
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("want the lines\n%s\ngot\n%s", strings.Join(want, "\n"), strings.Join(got, "\n"))
	}
}
