package logthrottle

import (
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/lameduck/lameduck/internal/clock"
)

// sdkError is what nacos-sdk-go v2.3.2 logs when a request fails while the
// server is down: an error printed with %+v, stack and all.
const sdkError = `Send request fail, request=SubscribeServiceRequest, body={"requestId":"","serviceName":"svc"}, retryTimes=%d, error=client not connected, current status:STARTING
github.com/nacos-group/nacos-sdk-go/v2/common/remote/rpc.(*RpcClient).Request
	/root/go/pkg/mod/github.com/nacos-group/nacos-sdk-go/v2@v2.3.2/common/remote/rpc/rpc_client.go:591
github.com/lameduck/lameduck/adapters/nacos.(*Registry).call.func1
	/work/adapters/nacos/nacos.go:314
runtime.goexit
	/usr/local/go/src/runtime/asm_amd64.s:1771`

func TestClean(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("é", MaxLen) // 2 bytes each: a cut must not split one
	cases := []struct {
		name, in, want string
	}{
		{"one line", "plain message", "plain message"},
		{"pkg/errors stack", fmt.Sprintf(sdkError, 2),
			`Send request fail, request=SubscribeServiceRequest, body={"requestId":"","serviceName":"svc"}, retryTimes=2, error=client not connected, current status:STARTING`},
		{"text after the stack", "outer\nmain.f\n\t/a/b.go:3\nmore context", "outer; more context"},
		{"goroutine dump", "panic: x\n\ngoroutine 7 [running]:\nmain.g(0x1)\n\t/a/main.go:9 +0x1d\ncreated by main.main in goroutine 1\n\t/a/main.go:4 +0x25",
			"panic: x"},
		{"tab line that is no frame", "head\n\tindented detail", "head; indented detail"},
		{"long", long, strings.Repeat("é", (MaxLen-3)/2) + "..."},
		{"CRLF", "a\r\nb", "a; b"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			got := Clean(c.in)
			if got != c.want {
				t.Fatalf("Clean(%q):\nwant %q\ngot  %q", c.in, c.want, got)
			}
			if len(got) > MaxLen {
				t.Fatalf("Clean(%q) is %d bytes, want at most %d", c.in, len(got), MaxLen)
			}
		})
	}
}

type harness struct {
	clk    *clock.Fake
	th     *Throttle
	lines  chan Line
	ticked chan struct{}
}

func newHarness(t *testing.T) *harness {
	h := &harness{
		clk:    clock.NewFake(time.Unix(1_700_000_000, 0)),
		lines:  make(chan Line, 1000),
		ticked: make(chan struct{}, 1000),
	}
	h.th = New(func(l Line) { h.lines <- l }, WithClock(h.clk), WithInterval(10*time.Second),
		func(o *options) { o.ticked = func() { h.ticked <- struct{}{} } })
	return h
}

// next returns the next line passed on, failing if none comes.
func (h *harness) next(t *testing.T) Line {
	t.Helper()
	select {
	case l := <-h.lines:
		return l
	case <-time.After(5 * time.Second):
		t.Fatal("want a line passed on, got none within 5s")
		return Line{}
	}
}

// none fails if a line has been passed on.
func (h *harness) none(t *testing.T) {
	t.Helper()
	select {
	case l := <-h.lines:
		t.Fatalf("want no line, got %+v", l)
	default:
	}
}

// advance moves the clock by d and waits for the n interval ends it causes.
func (h *harness) advance(t *testing.T, d time.Duration, n int) {
	t.Helper()
	h.clk.Advance(d)
	for range n {
		select {
		case <-h.ticked:
		case <-time.After(5 * time.Second):
			t.Fatal("an interval's end was not handled within 5s")
		}
	}
}

func TestThrottleOneLinePerInterval(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	for i := range 40 { // the SDK's retry counter differs in each
		h.th.Log(slog.LevelError, fmt.Sprintf(sdkError, i))
	}
	first := h.next(t)
	if first.Repeated != 0 || first.Level != slog.LevelError || !strings.HasSuffix(first.Msg, "current status:STARTING") ||
		!strings.Contains(first.Msg, "retryTimes=0,") {
		t.Fatalf("want the first message, cleaned, passed on at once, got %+v", first)
	}
	h.none(t)

	h.advance(t, 9*time.Second, 0)
	h.none(t)
	h.advance(t, time.Second, 1)
	if got := h.next(t); got.Repeated != 39 || got.Within != 10*time.Second || got.Msg != first.Msg {
		t.Fatalf("want the count of the 39 held back after 10s, with the first message, got %+v", got)
	}

	// The run goes on: still no line per message, one count per interval.
	for i := range 5 {
		h.th.Log(slog.LevelError, fmt.Sprintf(sdkError, 100+i))
	}
	h.none(t)
	h.advance(t, 10*time.Second, 1)
	if got := h.next(t); got.Repeated != 5 {
		t.Fatalf("want a count of 5 for the second interval, got %+v", got)
	}

	// A quiet interval ends the run, with no line; the next message is news.
	h.advance(t, 10*time.Second, 1)
	h.none(t)
	if n := h.clk.Timers(); n != 0 {
		t.Fatalf("want no timer once the run ended, got %d", n)
	}
	h.th.Log(slog.LevelError, fmt.Sprintf(sdkError, 7))
	if got := h.next(t); got.Repeated != 0 || !strings.Contains(got.Msg, "retryTimes=7,") {
		t.Fatalf("want the message after a quiet interval passed on at once, got %+v", got)
	}
}

func TestThrottleDistinctMessages(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.th.Log(slog.LevelWarn, "fail to connect server, after trying 1 times")
	h.th.Log(slog.LevelError, "fail to connect server, after trying 2 times") // another level
	h.th.Log(slog.LevelWarn, "login failed")
	h.th.Log(slog.LevelWarn, "fail to connect server, after trying 3 times")
	want := []string{"WARN fail to connect server, after trying 1 times", "ERROR fail to connect server, after trying 2 times", "WARN login failed"}
	for _, w := range want {
		l := h.next(t)
		if got := l.Level.String() + " " + l.Msg; got != w || l.Repeated != 0 {
			t.Fatalf("want %q passed on, got %+v", w, l)
		}
	}
	h.none(t)
}

func TestThrottleFlush(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	for i := range 3 {
		h.th.Log(slog.LevelWarn, fmt.Sprintf("attempt %d failed", i))
	}
	h.th.Log(slog.LevelWarn, "once")
	h.next(t)
	h.next(t)
	h.advance(t, 3*time.Second, 0)
	h.th.Flush()
	if got := h.next(t); got.Repeated != 2 || got.Msg != "attempt 0 failed" || got.Within != 3*time.Second {
		t.Fatalf("want Flush to pass on the 2 held back, got %+v", got)
	}
	h.none(t) // "once" held nothing back: no count
	if n := h.clk.Timers(); n != 0 {
		t.Fatalf("want no timer left after Flush, got %d", n)
	}
	h.th.Log(slog.LevelWarn, "attempt 9 failed")
	if got := h.next(t); got.Repeated != 0 {
		t.Fatalf("want the first message after Flush passed on at once, got %+v", got)
	}
}

func TestThrottleBoundsItsMemory(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	for i := range maxKeys + 51 {
		h.th.Log(slog.LevelInfo, fmt.Sprintf("message %c%c", 'a'+i%26, 'a'+i/26))
	}
	for range maxKeys {
		h.next(t)
	}
	if got := h.next(t); got.Msg != overflowMsg || got.Level != slog.LevelWarn {
		t.Fatalf("want the overflow line once the runs are full, got %+v", got)
	}
	h.none(t)
	h.th.mu.Lock()
	n := len(h.th.runs)
	h.th.mu.Unlock()
	if n != maxKeys+1 {
		t.Fatalf("want %d runs tracked and the overflow, got %d", maxKeys, n)
	}
	h.advance(t, 10*time.Second, maxKeys+1)
	if got := h.next(t); got.Msg != overflowMsg || got.Repeated != 50 {
		t.Fatalf("want the overflow count of 50 dropped messages, got %+v", got)
	}
}
