package qailipc_test

// Benchmarks through a real daemon: go test -run '^$' -bench . ./qailipc/

import "testing"

func benchEnv(b *testing.B) *testEnv {
	b.Helper()
	return setup(b, "CREATE TABLE users (id int PRIMARY KEY, name text NOT NULL)",
		"INSERT INTO users SELECT i, 'user' || i FROM generate_series(1, 10000) i")
}

func BenchmarkQuery(b *testing.B) {
	e := benchEnv(b)
	stmt, err := e.client.Prepare(e.ctx, "SELECT id, name FROM users WHERE id = $1")
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	i := 0
	for b.Loop() {
		i++
		if _, err := stmt.Query(e.ctx, i%10000+1); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkQueryParallel(b *testing.B) {
	e := benchEnv(b)
	stmt, err := e.client.Prepare(e.ctx, "SELECT id, name FROM users WHERE id = $1")
	if err != nil {
		b.Fatal(err)
	}
	b.SetParallelism(4)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			i++
			if _, err := stmt.Query(e.ctx, i%10000+1); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func benchPipeline(b *testing.B, count bool) {
	e := benchEnv(b)
	const n = 10000
	batch := make([][]any, n)
	for i := range batch {
		batch[i] = []any{i + 1}
	}
	stmt, err := e.client.Prepare(e.ctx, "SELECT id, name FROM users WHERE id = $1")
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for b.Loop() {
		if count {
			if _, err := stmt.PipelineCount(e.ctx, batch, nil); err != nil {
				b.Fatal(err)
			}
		} else if _, err := stmt.Pipeline(e.ctx, batch, nil); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "queries/s")
}

// BenchmarkPipeline runs 10,000 point queries per op and decodes every row.
func BenchmarkPipeline(b *testing.B) { benchPipeline(b, false) }

// BenchmarkPipelineCount runs 10,000 point queries per op, count only.
func BenchmarkPipelineCount(b *testing.B) { benchPipeline(b, true) }
