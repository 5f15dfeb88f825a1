package qailipc_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestExampleProgram runs cmd/qail-example against a real daemon.
func TestExampleProgram(t *testing.T) {
	e := setup(t)
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go is not on PATH")
	}
	cmd := exec.CommandContext(e.ctx, goBin, "run", "../cmd/qail-example", "-socket", e.d.socket, "-upstream", "main")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("qail-example: %v\n%s", err, out)
	}
	t.Logf("%s", out)
	for _, want := range []string{"connected to qail-daemon", "pipeline inserted 1000 rows", "user42"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if n, _ := e.pg.psql(e.db, "SELECT count(*) FROM pg_tables WHERE tablename = 'qail_example'"); strings.TrimSpace(n) != "0" {
		t.Errorf("qail_example left behind: %s", n)
	}
}
