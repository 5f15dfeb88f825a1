package qailipc_test

// Test harness: one throwaway PostgreSQL cluster per test run (started by the first test
// that needs it), a fresh database and a real qail-daemon per test.
//
// The cluster is made with the installed initdb (PATH, else the newest
// /usr/lib/postgresql/*/bin), listens on 127.0.0.1 with a free port and on a private socket
// directory, and wants a scram-sha-256 password. PostgreSQL refuses to run as root, so as
// root every server program runs as postgres through runuser, in a directory chowned to it.
// A watchdog process stops the cluster if the test binary dies without cleaning up.
//
// The daemon binary is $QAIL_DAEMON_BIN, else <repo>/target/debug/qail-daemon. Each daemon
// gets its own config file and socket in a short temporary directory (socket paths are
// limited to 108 bytes), and is stopped when its test ends.

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/qail-daemon/qail-daemon/clients/go/qailipc"
)

const (
	pgUser     = "postgres"
	pgPassword = "qail-go-test-password"
	// testTimeout bounds the client calls of one test.
	testTimeout = 90 * time.Second
	// clientTimeout is Options.Timeout of the clients made by the harness.
	clientTimeout = 30 * time.Second
)

var (
	clusterOnce sync.Once
	sharedPG    *cluster
	clusterErr  error
	dbCounter   atomic.Int64
)

func TestMain(m *testing.M) {
	code := m.Run()
	if sharedPG != nil {
		sharedPG.stop()
	}
	os.Exit(code)
}

// pg returns the run's cluster, starting it on first use. Integration tests are skipped
// with -short.
func pg(t testing.TB) *cluster {
	t.Helper()
	if testing.Short() {
		t.Skip("integration test (needs PostgreSQL and qail-daemon); skipped with -short")
	}
	clusterOnce.Do(func() { sharedPG, clusterErr = startCluster() })
	if clusterErr != nil {
		t.Fatal(clusterErr)
	}
	return sharedPG
}

type cluster struct {
	bin        string
	root       string
	sockDir    string
	data       string
	port       int
	asPostgres bool
}

func findPGBin() (string, error) {
	if initdb, err := exec.LookPath("initdb"); err == nil {
		if real, err := filepath.EvalSymlinks(initdb); err == nil {
			return filepath.Dir(real), nil
		}
		return filepath.Dir(initdb), nil
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	version := func(d string) int {
		n, _ := strconv.Atoi(filepath.Base(filepath.Dir(d)))
		return n
	}
	sort.Slice(dirs, func(i, j int) bool { return version(dirs[i]) > version(dirs[j]) })
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "initdb")); err == nil {
			return d, nil
		}
	}
	return "", fmt.Errorf("no PostgreSQL server found (initdb on PATH or in /usr/lib/postgresql/*/bin): install the postgresql package")
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func startCluster() (c *cluster, err error) {
	bin, err := findPGBin()
	if err != nil {
		return nil, err
	}
	root, err := os.MkdirTemp("", "qail-go-pg-")
	if err != nil {
		return nil, err
	}
	c = &cluster{bin: bin, root: root, sockDir: filepath.Join(root, "sock"), data: filepath.Join(root, "data"),
		asPostgres: os.Geteuid() == 0}
	defer func() {
		if err != nil {
			c.stop()
			c = nil
		}
	}()
	if err := os.Mkdir(c.sockDir, 0o700); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(root, "pwfile"), []byte(pgPassword+"\n"), 0o600); err != nil {
		return nil, err
	}
	if c.asPostgres {
		u, err := user.Lookup("postgres")
		if err != nil {
			return nil, fmt.Errorf("running as root needs a postgres user to run the server: %w", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		err = filepath.Walk(root, func(p string, _ os.FileInfo, err error) error {
			if err != nil {
				return err
			}
			return os.Chown(p, uid, gid)
		})
		if err != nil {
			return nil, err
		}
	}
	out, err := c.server("initdb", "-D", c.data, "-U", pgUser, "--auth=scram-sha-256",
		"--pwfile="+filepath.Join(root, "pwfile"), "-E", "UTF8", "--no-locale", "--no-sync").CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("initdb failed: %v\n%s", err, out)
	}
	conf := fmt.Sprintf("listen_addresses = '127.0.0.1'\nunix_socket_directories = '%s'\n"+
		"fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"+
		"shared_buffers = 32MB\nmax_connections = 200\n", c.sockDir)
	f, err := os.OpenFile(filepath.Join(c.data, "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return nil, err
	}
	_, err = f.WriteString(conf)
	f.Close()
	if err != nil {
		return nil, err
	}
	for range 3 {
		if c.port, err = freePort(); err != nil {
			return nil, err
		}
		out, err = c.server("pg_ctl", "-D", c.data, "-l", filepath.Join(root, "postgres.log"), "-w", "-t", "60",
			"-o", fmt.Sprintf("-p %d", c.port), "start").CombinedOutput()
		if err == nil {
			c.watchdog()
			return c, nil
		}
	}
	log, _ := os.ReadFile(filepath.Join(root, "postgres.log"))
	return nil, fmt.Errorf("PostgreSQL did not start: %v\n%s\n%s", err, out, log)
}

// server returns the command for a server program, run as postgres when we are root.
func (c *cluster) server(prog string, args ...string) *exec.Cmd {
	path := filepath.Join(c.bin, prog)
	if c.asPostgres {
		return exec.Command("runuser", append([]string{"-u", "postgres", "--", path}, args...)...)
	}
	return exec.Command(path, args...)
}

// watchdog stops the cluster once this process is gone, should it die before stop runs
// (killed, or go test's -timeout).
func (c *cluster) watchdog() {
	stop := c.server("pg_ctl", "-D", c.data, "-m", "immediate", "stop")
	quoted := make([]string, len(stop.Args))
	for i, a := range stop.Args {
		quoted[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
	}
	script := fmt.Sprintf("while kill -0 %d 2>/dev/null; do sleep 1; done; %s >/dev/null 2>&1; rm -rf '%s'",
		os.Getpid(), strings.Join(quoted, " "), c.root)
	cmd := exec.Command("sh", "-c", script)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err == nil {
		go cmd.Wait()
	}
}

func (c *cluster) stop() {
	if _, err := os.Stat(filepath.Join(c.data, "postmaster.pid")); err == nil {
		c.server("pg_ctl", "-D", c.data, "-m", "immediate", "-w", "stop").Run()
	}
	os.RemoveAll(c.root)
}

// psql runs SQL as the superuser over the private socket directory and returns stdout.
func (c *cluster) psql(database, sql string) (string, error) {
	psql := filepath.Join(c.bin, "psql")
	if _, err := os.Stat(psql); err != nil {
		psql = "psql"
	}
	cmd := exec.Command(psql, "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", c.sockDir,
		"-p", strconv.Itoa(c.port), "-U", pgUser, "-d", database, "-c", sql)
	cmd.Env = append(os.Environ(), "PGPASSWORD="+pgPassword)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("psql %q: %v: %s", sql, err, stderr.String())
	}
	return string(out), nil
}

func (c *cluster) createDatabase(t testing.TB) string {
	t.Helper()
	name := fmt.Sprintf("qgo_%d_%d", os.Getpid(), dbCounter.Add(1))
	if _, err := c.psql("postgres", "CREATE DATABASE "+name); err != nil {
		t.Fatal(err)
	}
	return name
}

// daemonBinary returns $QAIL_DAEMON_BIN, else <repo>/target/debug/qail-daemon (the module
// lives in <repo>/clients/go).
func daemonBinary(t testing.TB) string {
	t.Helper()
	if bin := os.Getenv("QAIL_DAEMON_BIN"); bin != "" {
		return bin
	}
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			break
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("go.mod not found above the test directory")
		}
		dir = parent
	}
	bin := filepath.Join(dir, "..", "..", "target", "debug", "qail-daemon")
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("qail-daemon binary not found at %s: build it with `cargo build` in the repository, or set QAIL_DAEMON_BIN", bin)
	}
	return filepath.Clean(bin)
}

// daemon is one qail-daemon process with an upstream "main" on one database.
type daemon struct {
	t        testing.TB
	bin      string
	pg       *cluster
	database string
	dir      string
	socket   string
	config   string
	log      string
	cmd      *exec.Cmd
	exited   chan struct{}
}

// startDaemon starts a daemon for database; ipc adds lines to its [ipc] table. It is
// stopped when the test ends.
func startDaemon(t testing.TB, c *cluster, database, ipc string) *daemon {
	t.Helper()
	dir, err := os.MkdirTemp("", "qd-")
	if err != nil {
		t.Fatal(err)
	}
	d := &daemon{t: t, bin: daemonBinary(t), pg: c, database: database, dir: dir,
		socket: filepath.Join(dir, "qail.sock"), config: filepath.Join(dir, "qail.toml"), log: filepath.Join(dir, "daemon.log")}
	conf := fmt.Sprintf("[ipc]\nsocket = %q\n%s\n\n[admin]\nlisten = \"\"\n\n"+
		"[[upstreams]]\nname = \"main\"\nhost = \"127.0.0.1\"\nport = %d\nuser = %q\ndatabase = %q\n"+
		"password = %q\npool_max = 4\npool_min_idle = 0\n\n[limits]\nshutdown_grace_ms = 2000\n", d.socket, ipc, c.port, pgUser, database, pgPassword)
	if err := os.WriteFile(d.config, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		d.stop()
		if t.Failed() {
			if log, err := os.ReadFile(d.log); err == nil {
				t.Logf("daemon log (last 4 KiB):\n%s", tail(log, 4096))
			}
		}
		os.RemoveAll(d.dir)
	})
	d.start()
	return d
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

func (d *daemon) start() {
	d.t.Helper()
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "QAIL_") {
			env = append(env, kv)
		}
	}
	log, err := os.OpenFile(d.log, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		d.t.Fatal(err)
	}
	defer log.Close()
	cmd := exec.Command(d.bin, "--config", d.config)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = log, log
	// Killed with the test binary, should it die first.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		d.t.Fatalf("starting %s: %v", d.bin, err)
	}
	d.cmd = cmd
	d.exited = make(chan struct{})
	go func(exited chan struct{}) {
		cmd.Wait()
		close(exited)
	}(d.exited)
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-d.exited:
			out, _ := os.ReadFile(d.log)
			d.t.Fatalf("qail-daemon exited: %s\n%s", cmd.ProcessState, tail(out, 4096))
		default:
		}
		if d.answersPing() {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	out, _ := os.ReadFile(d.log)
	d.t.Fatalf("qail-daemon did not start within 30 s:\n%s", tail(out, 4096))
}

// answersPing sends one raw ping frame (works with or without a token).
func (d *daemon) answersPing() bool {
	nc, err := net.DialTimeout("unix", d.socket, time.Second)
	if err != nil {
		return false
	}
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(5 * time.Second))
	if err := writeRawFrame(nc, map[string]any{"id": 1, "op": "ping"}); err != nil {
		return false
	}
	v, err := readRawFrame(nc)
	if err != nil {
		return false
	}
	m, _ := v.(map[string]any)
	return m["ok"] == true
}

// stop sends SIGTERM and waits (killing after 20 s).
func (d *daemon) stop() {
	if d.cmd == nil {
		return
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
	case <-time.After(20 * time.Second):
		d.cmd.Process.Kill()
		<-d.exited
	}
	d.cmd = nil
}

func (d *daemon) restart() {
	d.t.Helper()
	d.stop()
	d.start()
}

// pgConfig returns the credentials connect_pg matches against upstream "main".
func (d *daemon) pgConfig() qailipc.PGConfig {
	return qailipc.PGConfig{Host: "127.0.0.1", Port: d.pg.port, User: pgUser, Database: d.database, Password: pgPassword}
}

// dial connects a client to upstream main; it is closed when the test ends.
func (d *daemon) dial(t testing.TB, opts qailipc.Options) *qailipc.Client {
	t.Helper()
	if opts.Path == "" {
		opts.Path = d.socket
	}
	if opts.Upstream == "" {
		opts.Upstream = "main"
	}
	if opts.Timeout == 0 {
		opts.Timeout = clientTimeout
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := qailipc.Dial(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// testEnv is one test's database, daemon and default client.
type testEnv struct {
	pg     *cluster
	db     string
	d      *daemon
	client *qailipc.Client
	ctx    context.Context
}

// setup makes a fresh database (running setup SQL in it), a daemon and a client.
func setup(t testing.TB, sql ...string) *testEnv {
	t.Helper()
	c := pg(t)
	db := c.createDatabase(t)
	for _, s := range sql {
		if _, err := c.psql(db, s); err != nil {
			t.Fatal(err)
		}
	}
	d := startDaemon(t, c, db, "")
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return &testEnv{pg: c, db: db, d: d, client: d.dial(t, qailipc.Options{}), ctx: ctx}
}

// Raw framing for the vectors and probes, independent of the package under test.

func writeRawFrame(w io.Writer, msg any) error {
	body, err := json.Marshal(msg)
	if err != nil {
		return err
	}
	frame := binary.BigEndian.AppendUint32(nil, uint32(len(body)))
	_, err = w.Write(append(frame, body...))
	return err
}

func readRawFrame(r io.Reader) (any, error) {
	var h [4]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return nil, err
	}
	body := make([]byte, binary.BigEndian.Uint32(h[:]))
	if _, err := io.ReadFull(r, body); err != nil {
		return nil, err
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, fmt.Errorf("bad JSON in frame %q: %w", body, err)
	}
	return v, nil
}
