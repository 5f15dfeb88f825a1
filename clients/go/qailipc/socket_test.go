package qailipc

import "testing"

func TestSocketPathRule(t *testing.T) {
	tests := []struct {
		name string
		path string
		env  map[string]string
		uid  int
		want string
	}{
		{"explicit path wins", "/x/y.sock", map[string]string{"QAIL_SOCKET": "/env.sock", "XDG_RUNTIME_DIR": "/run/user/1000"}, 1000, "/x/y.sock"},
		{"QAIL_SOCKET", "", map[string]string{"QAIL_SOCKET": "/env.sock", "XDG_RUNTIME_DIR": "/run/user/1000"}, 1000, "/env.sock"},
		{"XDG_RUNTIME_DIR", "", map[string]string{"XDG_RUNTIME_DIR": "/run/user/1000"}, 1000, "/run/user/1000/qail/qail.sock"},
		{"XDG_RUNTIME_DIR for root", "", map[string]string{"XDG_RUNTIME_DIR": "/run/user/0"}, 0, "/run/user/0/qail/qail.sock"},
		{"empty QAIL_SOCKET is unset", "", map[string]string{"QAIL_SOCKET": ""}, 0, "/run/qail/qail.sock"},
		{"root", "", nil, 0, "/run/qail/qail.sock"},
		{"other user", "", nil, 1234, "/tmp/qail-1234/qail.sock"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			getenv := func(k string) string { return tt.env[k] }
			if got := resolveSocketPath(tt.path, getenv, tt.uid); got != tt.want {
				t.Errorf("resolveSocketPath = %q, want %q", got, tt.want)
			}
		})
	}
	t.Run("process environment", func(t *testing.T) {
		t.Setenv("QAIL_SOCKET", "")
		t.Setenv("XDG_RUNTIME_DIR", "/run/user/42")
		if got := ResolveSocketPath(""); got != "/run/user/42/qail/qail.sock" {
			t.Errorf("ResolveSocketPath = %q", got)
		}
		if got := DefaultSocketPath(); got != "/run/user/42/qail/qail.sock" {
			t.Errorf("DefaultSocketPath = %q", got)
		}
		t.Setenv("QAIL_SOCKET", "/tmp/q.sock")
		if got := ResolveSocketPath(""); got != "/tmp/q.sock" {
			t.Errorf("ResolveSocketPath with QAIL_SOCKET = %q", got)
		}
	})
}
