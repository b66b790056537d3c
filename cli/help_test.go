package cli

import (
	"strings"
	"testing"
)

// Help works for the app and every command, with either spelling, and in
// parallel (the App must not share urfave/cli's global help flag).
func TestHelp(t *testing.T) {
	t.Parallel()
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"--help"}, "COMMANDS:"},
		{[]string{"-h"}, "COMMANDS:"},
		{nil, "COMMANDS:"},
		{[]string{"offline", "--help"}, "lameduck offline - "},
		{[]string{"prestop", "-h"}, "lameduck prestop - "},
		{[]string{"status", "--help"}, "lameduck status - "},
		{[]string{"demo", "-h"}, "lameduck demo - "},
	}
	for _, c := range cases {
		t.Run(strings.Join(append([]string{"lameduck"}, c.args...), " "), func(t *testing.T) {
			t.Parallel()
			code, stdout, stderr := run(t, c.args...)
			if code != ExitOK || stderr != "" {
				t.Fatalf("want exit code 0 and nothing on stderr, got %d and %q", code, stderr)
			}
			if !strings.Contains(stdout, c.want) || !strings.Contains(stdout, "--help, -h") {
				t.Fatalf("want help holding %q and \"--help, -h\", got:\n%s", c.want, stdout)
			}
			if strings.Contains(stdout, "show help (default") {
				t.Fatalf("want no default shown for --help, got:\n%s", stdout)
			}
		})
	}
}
