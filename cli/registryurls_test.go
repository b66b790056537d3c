package cli

import (
	"slices"
	"testing"
)

// urfave/cli splits --registry at commas; joinURLs puts back the URLs that
// hold commas of their own.
func TestJoinURLs(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		pieces []string
		want   []string
	}{
		{name: "two registries", pieces: []string{"consul://127.0.0.1:8500", "nacos://127.0.0.1:8848"},
			want: []string{"consul://127.0.0.1:8500", "nacos://127.0.0.1:8848"}},
		{name: "a Nacos cluster", pieces: []string{"nacos://127.0.0.1:8858", "127.0.0.1:8868", "127.0.0.1:8878"},
			want: []string{"nacos://127.0.0.1:8858,127.0.0.1:8868,127.0.0.1:8878"}},
		{name: "a confirm list, then another registry", pieces: []string{"consul://127.0.0.21:8500?confirm=127.0.0.11:8500", "127.0.0.12:8500", "servers", "memory://"},
			want: []string{"consul://127.0.0.21:8500?confirm=127.0.0.11:8500,127.0.0.12:8500,servers", "memory://"}},
		{name: "no scheme at first is left for Open to refuse", pieces: []string{"127.0.0.1:8500", "nacos://x:1"},
			want: []string{"127.0.0.1:8500", "nacos://x:1"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if got := joinURLs(tc.pieces); !slices.Equal(got, tc.want) {
				t.Errorf("joinURLs(%q): want %q, got %q", tc.pieces, tc.want, got)
			}
		})
	}
}
