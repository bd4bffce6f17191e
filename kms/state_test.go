package kms

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keywarden/keywarden/kms/envelope"
)

// FuzzDecodeState: a state file is read back from disk, where anything may
// have happened to it. No input panics, and what decodeState accepts is a
// version-1 state of a KEK wrapped under the current root key, within its
// bounds, that decodes the same again once re-encoded.
func FuzzDecodeState(f *testing.F) {
	const root = "tink:1:00000001"
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	const maxUses, maxAge = DefaultKEKMaxUses, DefaultKEKMaxAge
	ann, err := envelope.EncodeKEK(root, bytes.Repeat([]byte{9}, 60))
	if err != nil {
		f.Fatal(err)
	}
	other, _ := envelope.EncodeKEK("tink:1:00000002", bytes.Repeat([]byte{9}, 60))
	state := func(v int, a []byte, created time.Time, uses uint64) []byte {
		b, err := json.Marshal(stateV1{Version: v, Annotation: a, Created: created, Uses: uses})
		if err != nil {
			f.Fatal(err)
		}
		return b
	}
	good := state(1, ann, now.Add(-time.Hour), 42)
	f.Add(good)
	f.Add(state(1, ann, now.Add(-maxAge), 0))
	f.Add(state(1, ann, now, maxUses-1))
	f.Add(state(1, ann, now.Add(-time.Hour), maxUses))
	f.Add(state(1, ann, time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC), 0))
	f.Add(state(2, ann, now.Add(-time.Hour), 0))
	f.Add(state(1, other, now.Add(-time.Hour), 0))
	f.Add(state(1, ann[:len(ann)-1], now.Add(-time.Hour), 0))
	f.Add(state(1, nil, time.Time{}, 0))
	f.Add(good[:len(good)/2])
	f.Add([]byte(`{"version":1,"annotation":"AQ==","created":"2026-11-27T11:00:00Z","uses":-1}`))
	f.Add([]byte(`{"version":1,"version":1}`))
	f.Add([]byte("null"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		st, ct, err := decodeState(b, root, now, maxUses, maxAge)
		if err != nil {
			if st.Annotation != nil || ct != nil {
				t.Fatalf("refused state %q still returned %+v", b, st)
			}
			return
		}
		if st.Version != 1 {
			t.Fatalf("adopted version %d", st.Version)
		}
		id, ct2, err := envelope.DecodeKEK(st.Annotation)
		if err != nil || id != root || !bytes.Equal(ct, ct2) {
			t.Fatalf("adopted annotation %x of root %q (%v)", st.Annotation, id, err)
		}
		if st.Uses >= maxUses {
			t.Fatalf("adopted a KEK used %d times", st.Uses)
		}
		if age := now.Sub(st.Created); age < 0 || age >= maxAge {
			t.Fatalf("adopted a KEK created %s (age %s)", st.Created, age)
		}
		again, _, err := decodeState(state(st.Version, st.Annotation, st.Created, st.Uses), root, now, maxUses, maxAge)
		if err != nil || !again.Created.Equal(st.Created) || again.Uses != st.Uses || !bytes.Equal(again.Annotation, st.Annotation) {
			t.Fatalf("re-encoded state decodes to %+v, %v; want %+v", again, err, st)
		}
	})
}

// A corrupt or hostile state file is never adopted: the service mints a new
// KEK, stays healthy, and says why only when the file is malformed.
func TestStateFileHostile(t *testing.T) {
	e := newEnv(t)
	dir := t.TempDir()
	genuine := filepath.Join(dir, "genuine.json")
	r0 := encrypt(t, e.service(func(c *Config) { c.StateFile = genuine }), seed(t))
	b, err := os.ReadFile(genuine)
	if err != nil {
		t.Fatal(err)
	}
	var st stateV1
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatal(err)
	}
	edit := func(f func(*stateV1)) []byte {
		c := st
		c.Annotation = bytes.Clone(st.Annotation)
		f(&c)
		out, err := json.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	otherRoot := newEnv(t)
	foreign := filepath.Join(dir, "foreign.json")
	encrypt(t, otherRoot.service(func(c *Config) { c.StateFile = foreign }), seed(t))
	foreignState, err := os.ReadFile(foreign)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name      string
		state     []byte
		malformed bool
	}{
		{name: "empty", state: []byte{}, malformed: true},
		{name: "truncated", state: b[:len(b)/2], malformed: true},
		{name: "not json", state: []byte("keywarden"), malformed: true},
		{name: "null", state: []byte("null"), malformed: true},
		{name: "version 2", state: edit(func(s *stateV1) { s.Version = 2 }), malformed: true},
		{name: "oversized", state: append(bytes.Clone(b), bytes.Repeat([]byte{' '}, maxStateSize)...)},
		{name: "no annotation", state: edit(func(s *stateV1) { s.Annotation = nil })},
		{name: "annotation bit flip", state: edit(func(s *stateV1) { s.Annotation[len(s.Annotation)-1] ^= 1 })},
		{name: "annotation truncated", state: edit(func(s *stateV1) { s.Annotation = s.Annotation[:len(s.Annotation)-1] })},
		{name: "other keyset", state: foreignState},
		{name: "spent", state: edit(func(s *stateV1) { s.Uses = DefaultKEKMaxUses })},
		{name: "too old", state: edit(func(s *stateV1) { s.Created = s.Created.Add(-DefaultKEKMaxAge) })},
		{name: "created in the future", state: edit(func(s *stateV1) { s.Created = time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC) })},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "state.json")
			if err := os.WriteFile(p, tc.state, 0o600); err != nil {
				t.Fatal(err)
			}
			e.mu.Lock()
			e.logs.Reset()
			e.mu.Unlock()
			wraps := e.spy.Wraps.Load()
			s := e.service(func(c *Config) { c.StateFile = p })
			if ok, reason := s.Healthy(); !ok {
				t.Fatalf("unhealthy: %s", reason)
			}
			r := encrypt(t, s, seed(t))
			if bytes.Equal(r.Annotations[envelope.AnnotationKey], r0.Annotations[envelope.AnnotationKey]) || e.spy.Wraps.Load() != wraps+1 {
				t.Fatal("hostile state file adopted")
			}
			e.mu.Lock()
			logged := strings.Contains(e.logs.String(), "ignoring malformed state file")
			e.mu.Unlock()
			if logged != tc.malformed {
				t.Fatalf("malformed-state warning logged: %v, want %v", logged, tc.malformed)
			}
		})
	}
}

// firstSeen returns the exported keywarden_root_key_first_seen_timestamp_seconds
// series: its key_id_hash and value. It fails unless there is exactly one.
func firstSeen(t *testing.T, s *Service) (string, float64) {
	t.Helper()
	mfs, err := s.cfg.Metrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "keywarden_root_key_first_seen_timestamp_seconds" {
			continue
		}
		if len(mf.GetMetric()) != 1 {
			t.Fatalf("%d first-seen series, want 1", len(mf.GetMetric()))
		}
		m := mf.GetMetric()[0]
		for _, l := range m.GetLabel() {
			if l.GetName() == "key_id_hash" {
				return l.GetValue(), m.GetGauge().GetValue()
			}
		}
		t.Fatal("first-seen series without key_id_hash")
	}
	t.Fatal("keywarden_root_key_first_seen_timestamp_seconds not exported")
	return "", 0
}

// stateRootFirstSeen reads root_first_seen from the state file.
func stateRootFirstSeen(t *testing.T, path string) time.Time {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var st stateV1
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatal(err)
	}
	return st.RootFirstSeen
}

// The root key's first-seen time survives restarts through the state file,
// also when the saved KEK itself is past its bounds, and starts again only
// when the root key version changes or nothing was saved.
func TestRootKeyFirstSeen(t *testing.T) {
	e := newEnv(t)
	state := filepath.Join(t.TempDir(), "state.json")
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	now := t0
	start := func(stateFile string) *Service {
		return e.service(func(c *Config) {
			c.StateFile = stateFile
			c.Now = func() time.Time { return now }
		})
	}
	ctx := context.Background()

	s1 := start(state)
	h1, v := firstSeen(t, s1)
	if v != float64(t0.Unix()) {
		t.Fatalf("first start: first seen %v, want %v", v, t0.Unix())
	}
	if got := stateRootFirstSeen(t, state); !got.Equal(t0) {
		t.Fatalf("state file root_first_seen %v, want %v", got, t0)
	}

	// A restart ten days later adopts the KEK and keeps the time.
	now = t0.Add(10 * 24 * time.Hour)
	s2 := start(state)
	if h, v := firstSeen(t, s2); h != h1 || v != float64(t0.Unix()) {
		t.Fatalf("restart: first seen %s %v, want %s %v", h, v, h1, t0.Unix())
	}

	// Past the KEK's max age a restart mints a new KEK under the same root
	// version: the time is still the first one, and saved again.
	now = t0.Add(DefaultKEKMaxAge + 30*24*time.Hour)
	wraps := e.spy.Wraps.Load()
	s3 := start(state)
	if e.spy.Wraps.Load() == wraps {
		t.Fatal("a spent state KEK was adopted; the test does not cover what it says")
	}
	if h, v := firstSeen(t, s3); h != h1 || v != float64(t0.Unix()) {
		t.Fatalf("new KEK, same root: first seen %s %v, want %s %v", h, v, h1, t0.Unix())
	}
	if got := stateRootFirstSeen(t, state); !got.Equal(t0) {
		t.Fatalf("state file root_first_seen after a new KEK %v, want %v", got, t0)
	}

	// A root rotation noticed by the running plugin starts the time anew.
	e.rotate()
	now = now.Add(time.Hour)
	rotated := now
	s3.Check(ctx)
	h2, v := firstSeen(t, s3)
	if h2 == h1 || v != float64(rotated.Unix()) {
		t.Fatalf("after rotation: first seen %s %v, want a new hash at %v", h2, v, rotated.Unix())
	}
	if got := stateRootFirstSeen(t, state); !got.Equal(rotated) {
		t.Fatalf("state file root_first_seen after rotation %v, want %v", got, rotated)
	}
	now = now.Add(24 * time.Hour)
	if h, v := firstSeen(t, start(state)); h != h2 || v != float64(rotated.Unix()) {
		t.Fatalf("restart after rotation: first seen %s %v, want %s %v", h, v, h2, rotated.Unix())
	}

	// A time after now in the file (clock set back, hand edit) is not
	// believed, and without a state file every start is a first sight.
	b, err := os.ReadFile(state)
	if err != nil {
		t.Fatal(err)
	}
	var st stateV1
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatal(err)
	}
	st.RootFirstSeen = now.Add(time.Hour)
	if b, err = json.Marshal(st); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(state, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, v := firstSeen(t, start(state)); v != float64(now.Unix()) {
		t.Fatalf("future root_first_seen: first seen %v, want now %v", v, now.Unix())
	}

	// A state file from before root_first_seen is adopted, and the time
	// chosen then is saved at once: a restart before any Encrypt keeps it.
	st.RootFirstSeen = time.Time{}
	if b, err = json.Marshal(st); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(state, b, 0o600); err != nil {
		t.Fatal(err)
	}
	upgraded := now
	wraps = e.spy.Wraps.Load()
	if _, v := firstSeen(t, start(state)); v != float64(upgraded.Unix()) {
		t.Fatalf("old state file: first seen %v, want now %v", v, upgraded.Unix())
	}
	if e.spy.Wraps.Load() != wraps {
		t.Fatal("the old-format state file's KEK was not adopted; the test does not cover what it says")
	}
	if got := stateRootFirstSeen(t, state); !got.Equal(upgraded) {
		t.Fatalf("old state file: root_first_seen saved as %v, want %v", got, upgraded)
	}
	now = now.Add(time.Hour)
	if _, v := firstSeen(t, start(state)); v != float64(upgraded.Unix()) {
		t.Fatalf("restart after an old state file: first seen %v, want %v", v, upgraded.Unix())
	}
	if _, v := firstSeen(t, start("")); v != float64(now.Unix()) {
		t.Fatalf("no state file: first seen %v, want now %v", v, now.Unix())
	}
}

func TestRootFirstSeenDecode(t *testing.T) {
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	ann, err := envelope.EncodeKEK("tink:1:00000001", bytes.Repeat([]byte{9}, 60))
	if err != nil {
		t.Fatal(err)
	}
	enc := func(st stateV1) []byte {
		b, err := json.Marshal(st)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	seen := now.Add(-100 * 24 * time.Hour)
	for _, c := range []struct {
		name string
		b    []byte
		root string
		ok   bool
	}{
		{"set", enc(stateV1{Version: 1, Annotation: ann, RootFirstSeen: seen}), "tink:1:00000001", true},
		{"other root", enc(stateV1{Version: 1, Annotation: ann, RootFirstSeen: seen}), "tink:1:00000002", false},
		{"absent (older file)", enc(stateV1{Version: 1, Annotation: ann}), "tink:1:00000001", false},
		{"future", enc(stateV1{Version: 1, Annotation: ann, RootFirstSeen: now.Add(time.Second)}), "tink:1:00000001", false},
		{"version 2", enc(stateV1{Version: 2, Annotation: ann, RootFirstSeen: seen}), "tink:1:00000001", false},
		{"garbage", []byte("{"), "tink:1:00000001", false},
	} {
		at, ok := rootFirstSeen(c.b, c.root, now)
		if ok != c.ok || (ok && !at.Equal(seen)) {
			t.Errorf("%s: rootFirstSeen = %v, %v; want ok=%v", c.name, at, ok, c.ok)
		}
	}
}
