package qailipc

import (
	"os"
	"path/filepath"
	"strconv"
)

// Protocol is the protocol version this package speaks; it is sent in hello.
const Protocol = 1

// SocketEnv names the environment variable that overrides the socket path. The daemon reads
// the same variable, so both sides agree without configuration.
const SocketEnv = "QAIL_SOCKET"

// DefaultSocketPath returns the daemon's default socket path, ignoring [SocketEnv]:
// $XDG_RUNTIME_DIR/qail/qail.sock when XDG_RUNTIME_DIR is set, else /run/qail/qail.sock
// for root and /tmp/qail-<uid>/qail.sock for any other user (docs/protocol.md, "Transport
// and framing").
func DefaultSocketPath() string {
	return defaultSocketPath(os.Getenv, os.Getuid())
}

// ResolveSocketPath returns the socket a client uses: path when it is not empty, else the
// value of [SocketEnv] when set, else [DefaultSocketPath].
func ResolveSocketPath(path string) string {
	return resolveSocketPath(path, os.Getenv, os.Getuid())
}

func defaultSocketPath(getenv func(string) string, uid int) string {
	if runtime := getenv("XDG_RUNTIME_DIR"); runtime != "" {
		return filepath.Join(runtime, "qail", "qail.sock")
	}
	if uid == 0 {
		return "/run/qail/qail.sock"
	}
	return "/tmp/qail-" + strconv.Itoa(uid) + "/qail.sock"
}

func resolveSocketPath(path string, getenv func(string) string, uid int) string {
	if path != "" {
		return path
	}
	if env := getenv(SocketEnv); env != "" {
		return env
	}
	return defaultSocketPath(getenv, uid)
}
