package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/keywarden/keywarden/internal/migrate"
)

func TestProgressLog(t *testing.T) {
	var buf bytes.Buffer
	now := time.Unix(0, 0)
	g := &globals{stderr: &buf, now: func() time.Time { return now }}
	p := g.newProgress(10 * time.Second)
	for i := int64(1); i <= 30; i++ {
		now = now.Add(time.Second)
		p.event(migrate.Event{Resource: "secrets", Total: 30, Processed: i, Counts: migrate.Counts{Rewritten: i}})
	}
	p.close()
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	// One line every 10 s of 30 s, plus the final one.
	if len(lines) != 4 || !strings.Contains(lines[3], "secrets 30/30 objects, rewritten 30") {
		t.Fatalf("log lines:\n%s", buf.String())
	}
}

func TestProgressBar(t *testing.T) {
	var buf bytes.Buffer
	g := &globals{stderr: &buf, stderrTTY: true, now: time.Now}
	p := g.newProgress(time.Second)
	p.event(migrate.Event{Resource: "secrets", Total: 2, Processed: 1})
	p.event(migrate.Event{Resource: "secrets", Total: 2, Processed: 2, Counts: migrate.Counts{Rewritten: 2}})
	p.event(migrate.Event{Resource: "configmaps", Total: 0, Processed: 1, Counts: migrate.Counts{Skipped: 1}})
	p.close()
	out := buf.String()
	if !strings.Contains(out, "secrets (rewritten 2") || !strings.Contains(out, "configmaps") {
		t.Fatalf("bar output: %q", out)
	}
}
