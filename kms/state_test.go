package kms

import (
	"bytes"
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
