package kms

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/keywarden/keywarden/keystore/file"
	"github.com/keywarden/keywarden/keystore/keystoretest"
	"github.com/keywarden/keywarden/kms/envelope"
)

// FuzzDecodeState: a state file is read back from disk, where anything may
// have happened to it. No input panics; what decodeState accepts is a
// version-2 state of a KEK wrapped under the current root key, with a MAC of
// the right size; what then verifies under the KEK's MAC key is exactly a
// state this test signed (the fuzzer cannot forge one); and what is also
// within its bounds decodes and verifies the same again once re-encoded.
func FuzzDecodeState(f *testing.F) {
	const root = "tink:1:00000001"
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	const maxUses, maxAge = DefaultKEKMaxUses, DefaultKEKMaxAge
	key, err := stateMACKey(bytes.Repeat([]byte{7}, envelope.KEKSize))
	if err != nil {
		f.Fatal(err)
	}
	ann, err := envelope.EncodeKEK(root, bytes.Repeat([]byte{9}, 60))
	if err != nil {
		f.Fatal(err)
	}
	other, _ := envelope.EncodeKEK("tink:1:00000002", bytes.Repeat([]byte{9}, 60))
	signed := map[string]bool{}
	state := func(v int, a []byte, created time.Time, uses uint64) []byte {
		st := stateFile{Version: v, Annotation: a, Created: created, Uses: uses, RootFirstSeen: created.Add(-time.Hour)}
		st.MAC = st.mac(key)
		signed[string(st.macInput())] = true
		b, err := json.Marshal(st)
		if err != nil {
			f.Fatal(err)
		}
		return b
	}
	good := state(2, ann, now.Add(-time.Hour), 42)
	f.Add(good)
	f.Add(state(2, ann, now.Add(-maxAge), 0))
	f.Add(state(2, ann, now, maxUses-1))
	f.Add(state(2, ann, now.Add(-time.Hour), maxUses))
	f.Add(state(2, ann, time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC), 0))
	f.Add(state(1, ann, now.Add(-time.Hour), 0))
	f.Add(state(3, ann, now.Add(-time.Hour), 0))
	f.Add(state(2, other, now.Add(-time.Hour), 0))
	f.Add(state(2, ann[:len(ann)-1], now.Add(-time.Hour), 0))
	f.Add(state(2, nil, time.Time{}, 0))
	f.Add(bytes.Replace(good, []byte(`"uses":42`), []byte(`"uses":41`), 1))
	f.Add(bytes.Replace(good, []byte(`"mac":"`), []byte(`"mac":"AA`), 1))
	f.Add(good[:len(good)/2])
	f.Add([]byte(`{"version":2,"annotation":"AQ==","created":"2026-11-27T11:00:00Z","uses":-1,"mac":"AA=="}`))
	f.Add([]byte(`{"version":2,"version":1}`))
	f.Add([]byte("null"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		st, a, err := decodeState(b, root)
		if err != nil {
			if st.Annotation != nil || st.MAC != nil || a.Copies != nil {
				t.Fatalf("refused state %q still returned %+v", b, st)
			}
			return
		}
		if st.Version != stateVersion || len(st.MAC) != sha256.Size {
			t.Fatalf("decoded version %d with a MAC of %d bytes", st.Version, len(st.MAC))
		}
		id, ct2, err := envelope.DecodeKEK(st.Annotation)
		if err != nil || id != root || len(a.Copies) != 1 || !bytes.Equal(a.Copies[0].RootCT, ct2) {
			t.Fatalf("decoded annotation %x of root %q (%v)", st.Annotation, id, err)
		}
		if st.verify(key) != nil {
			return
		}
		if !signed[string(st.macInput())] {
			t.Fatalf("a state this test never signed verified: %+v", st)
		}
		if st.within(now, maxUses, maxAge) != nil {
			return
		}
		if st.Uses >= maxUses {
			t.Fatalf("adopted a KEK used %d times", st.Uses)
		}
		if age := now.Sub(st.Created); age < 0 || age >= maxAge {
			t.Fatalf("adopted a KEK created %s (age %s)", st.Created, age)
		}
		re, err := json.Marshal(st)
		if err != nil {
			t.Fatal(err)
		}
		again, _, err := decodeState(re, root)
		if err == nil {
			err = again.verify(key)
		}
		if err != nil || !again.Created.Equal(st.Created) || again.Uses != st.Uses || !bytes.Equal(again.Annotation, st.Annotation) ||
			!again.RootFirstSeen.Equal(st.RootFirstSeen) {
			t.Fatalf("re-encoded state decodes to %+v, %v; want %+v", again, err, st)
		}
	})
}

// A corrupt or hostile state file is never adopted: the service mints a new
// KEK, stays healthy, and says why in one warning, without the file's
// contents; a file of another root version is passed over in silence.
func TestStateFileHostile(t *testing.T) {
	e := newEnv(t)
	dir := t.TempDir()
	genuine := filepath.Join(dir, "genuine.json")
	r0 := encrypt(t, e.service(func(c *Config) { c.StateFile = genuine }), seed(t))
	b, err := os.ReadFile(genuine)
	if err != nil {
		t.Fatal(err)
	}
	var st stateFile
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatal(err)
	}
	edit := func(f func(*stateFile)) []byte {
		c := st
		c.Annotation = bytes.Clone(st.Annotation)
		c.MAC = bytes.Clone(st.MAC)
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
	const (
		malformed   = "ignoring malformed state file"
		unreadable  = "ignoring unreadable state file"
		unauthentic = "MAC does not verify"
		version1    = "state file is of version 1"
		noUnwrap    = "state file KEK did not unwrap"
	)
	tests := []struct {
		name  string
		state []byte
		warn  string // the one warning about the file, "" for none
	}{
		{name: "empty", state: []byte{}, warn: malformed},
		{name: "truncated", state: b[:len(b)/2], warn: malformed},
		{name: "not json", state: []byte("keywarden"), warn: malformed},
		{name: "null", state: []byte("null"), warn: malformed},
		{name: "version 3", state: edit(func(s *stateFile) { s.Version = 3 }), warn: malformed},
		{name: "version 1", state: edit(func(s *stateFile) { s.Version = 1 }), warn: version1},
		{name: "mac too short", state: edit(func(s *stateFile) { s.MAC = s.MAC[:31] }), warn: malformed},
		{name: "mac bit flip", state: edit(func(s *stateFile) { s.MAC[0] ^= 1 }), warn: unauthentic},
		{name: "oversized", state: append(bytes.Clone(b), bytes.Repeat([]byte{' '}, maxStateSize)...), warn: unreadable},
		{name: "no annotation", state: edit(func(s *stateFile) { s.Annotation = nil }), warn: malformed},
		{name: "annotation bit flip", state: edit(func(s *stateFile) { s.Annotation[len(s.Annotation)-1] ^= 1 }), warn: noUnwrap},
		{name: "annotation truncated", state: edit(func(s *stateFile) { s.Annotation = s.Annotation[:len(s.Annotation)-1] }), warn: malformed},
		{name: "other keyset", state: foreignState},
		{name: "spent", state: edit(func(s *stateFile) { s.Uses = DefaultKEKMaxUses }), warn: unauthentic},
		{name: "too old", state: edit(func(s *stateFile) { s.Created = s.Created.Add(-DefaultKEKMaxAge) }), warn: unauthentic},
		{name: "created in the future", state: edit(func(s *stateFile) { s.Created = time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC) }), warn: unauthentic},
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
			logs := e.logs.String()
			e.mu.Unlock()
			for _, w := range []string{malformed, unreadable, unauthentic, version1, noUnwrap} {
				if n, want := strings.Count(logs, w), b2i(w == tc.warn); n != want {
					t.Errorf("warning %q logged %d times, want %d", w, n, want)
				}
			}
			if a := base64.StdEncoding.EncodeToString(st.Annotation); strings.Contains(logs, a[:16]) {
				t.Error("the state file's annotation was logged")
			}
		})
	}
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
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
	var st stateFile
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

	// A restart a day later adopts the KEK and keeps the time.
	now = t0.Add(24 * time.Hour)
	wraps := e.spy.Wraps.Load()
	s2 := start(state)
	if e.spy.Wraps.Load() != wraps {
		t.Fatal("the state KEK was not adopted; the test does not cover what it says")
	}
	if h, v := firstSeen(t, s2); h != h1 || v != float64(t0.Unix()) {
		t.Fatalf("restart: first seen %s %v, want %s %v", h, v, h1, t0.Unix())
	}

	// Past the KEK's max age a restart mints a new KEK under the same root
	// version: the time is still the first one, and saved again.
	now = t0.Add(DefaultKEKMaxAge + 30*24*time.Hour)
	wraps = e.spy.Wraps.Load()
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

	// A hand-edited time is not believed, nor anything else in that file.
	b, err := os.ReadFile(state)
	if err != nil {
		t.Fatal(err)
	}
	edited := editState(t, b, "root_first_seen", rotated.Add(-100*24*time.Hour))
	if err := os.WriteFile(state, edited, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, v := firstSeen(t, start(state)); v != float64(now.Unix()) {
		t.Fatalf("edited root_first_seen: first seen %v, want now %v", v, now.Unix())
	}

	// A genuine time after now (the clock was set back) is not believed
	// either: the clock starts from now.
	if got := stateRootFirstSeen(t, state); !got.Equal(now) {
		t.Fatalf("state file root_first_seen %v, want %v", got, now)
	}
	now = now.Add(-time.Hour)
	if _, v := firstSeen(t, start(state)); v != float64(now.Unix()) {
		t.Fatalf("future root_first_seen: first seen %v, want now %v", v, now.Unix())
	}

	// A version-1 file without root_first_seen (from before it existed)
	// starts the clock at now, and the time is saved at once: a restart
	// before any Encrypt keeps it.
	b, err = os.ReadFile(state)
	if err != nil {
		t.Fatal(err)
	}
	v1 := editState(t, editState(t, editState(t, b, "version", 1), "mac", nil), "root_first_seen", nil)
	if err := os.WriteFile(state, v1, 0o600); err != nil {
		t.Fatal(err)
	}
	now = now.Add(time.Hour)
	upgraded := now
	if _, v := firstSeen(t, start(state)); v != float64(upgraded.Unix()) {
		t.Fatalf("old state file: first seen %v, want now %v", v, upgraded.Unix())
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

// Of a version-1 file, only root_first_seen is read (once, at the upgrade):
// for the current root version, set, and not after now.
func TestV1RootFirstSeen(t *testing.T) {
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	ann, err := envelope.EncodeKEK("tink:1:00000001", bytes.Repeat([]byte{9}, 60))
	if err != nil {
		t.Fatal(err)
	}
	enc := func(st stateFile) []byte {
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
		{"set", enc(stateFile{Version: 1, Annotation: ann, RootFirstSeen: seen}), "tink:1:00000001", true},
		{"other root", enc(stateFile{Version: 1, Annotation: ann, RootFirstSeen: seen}), "tink:1:00000002", false},
		{"absent (older file)", enc(stateFile{Version: 1, Annotation: ann}), "tink:1:00000001", false},
		{"future", enc(stateFile{Version: 1, Annotation: ann, RootFirstSeen: now.Add(time.Second)}), "tink:1:00000001", false},
		{"version 2", enc(stateFile{Version: 2, Annotation: ann, RootFirstSeen: seen}), "tink:1:00000001", false},
		{"garbage", []byte("{"), "tink:1:00000001", false},
	} {
		at, ok := v1RootFirstSeen(c.b, c.root, now)
		if ok != c.ok || (ok && !at.Equal(seen)) {
			t.Errorf("%s: v1RootFirstSeen = %v, %v; want ok=%v", c.name, at, ok, c.ok)
		}
	}
}

// editState returns the state file b with field set to v, or removed if v
// is nil; the other fields stay as written.
func editState(t *testing.T, b []byte, field string, v any) []byte {
	t.Helper()
	var m map[string]json.RawMessage
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	if v == nil {
		delete(m, field)
	} else {
		raw, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		m[field] = raw
	}
	out, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// stateField decodes one field of the state file b into v.
func stateField(t *testing.T, b []byte, field string, v any) {
	t.Helper()
	var m map[string]json.RawMessage
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(m[field], v); err != nil {
		t.Fatalf("state file field %q: %v", field, err)
	}
}

// startAdopts starts a service on the state file at path with the clock at
// now and reports whether it adopted the KEK of annotation ann (no Wrap, and
// Encrypt answers under ann). It fails if the start takes longer than 10 s.
func startAdopts(t *testing.T, e *env, path string, now time.Time, ann []byte) (*Service, bool) {
	t.Helper()
	wraps := e.spy.Wraps.Load()
	done := make(chan *Service, 1)
	go func() {
		done <- e.service(func(c *Config) {
			c.StateFile = path
			c.Now = func() time.Time { return now }
		})
	}()
	var s *Service
	select {
	case s = <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("start-up with this state file did not finish within 10 s")
	}
	if ok, reason := s.Healthy(); !ok {
		t.Fatalf("unhealthy: %s", reason)
	}
	r := encrypt(t, s, seed(t))
	adopted := bytes.Equal(r.Annotations[envelope.AnnotationKey], ann)
	if adopted != (e.spy.Wraps.Load() == wraps) {
		t.Fatalf("adopted %v, but %d wraps", adopted, e.spy.Wraps.Load()-wraps)
	}
	return s, adopted
}

// The state file is authenticated: a genuine file is adopted with its use
// count, and any edit of what it says about the KEK (created, uses,
// root_first_seen) or of its MAC means it is not, so an expired KEK cannot
// be brought back by editing its dates or counts.
func TestStateFileAuthenticated(t *testing.T) {
	e := newEnv(t)
	dir := t.TempDir()
	t0 := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	now := t0
	genuinePath := filepath.Join(dir, "genuine.json")
	s1 := e.service(func(c *Config) {
		c.StateFile = genuinePath
		c.Now = func() time.Time { return now }
	})
	ann := encrypt(t, s1, seed(t)).Annotations[envelope.AnnotationKey]
	older, err := os.ReadFile(genuinePath) // saved at mint: uses 0
	if err != nil {
		t.Fatal(err)
	}
	for range 4 {
		encrypt(t, s1, seed(t))
	}
	now = t0.Add(time.Minute)
	s1.Check(context.Background())
	genuine, err := os.ReadFile(genuinePath)
	if err != nil {
		t.Fatal(err)
	}
	var uses uint64
	stateField(t, genuine, "uses", &uses)
	if uses != 5 {
		t.Fatalf("state file uses %d, want 5", uses)
	}
	var olderFields map[string]json.RawMessage
	if err := json.Unmarshal(older, &olderFields); err != nil {
		t.Fatal(err)
	}
	otherMAC := olderFields["mac"]

	later := t0.Add(time.Hour)
	expired := t0.Add(DefaultKEKMaxAge + time.Hour)
	tests := []struct {
		name  string
		state []byte
		now   time.Time
		adopt bool
	}{
		{name: "genuine", state: genuine, now: later, adopt: true},
		{name: "genuine, past max age", state: genuine, now: expired},
		{name: "created moved so an expired KEK looks new", state: editState(t, genuine, "created", expired.Add(-time.Hour)), now: expired},
		{name: "created moved within bounds", state: editState(t, genuine, "created", t0.Add(time.Second)), now: later},
		{name: "uses rolled back", state: editState(t, genuine, "uses", 0), now: later},
		{name: "uses raised", state: editState(t, genuine, "uses", 6), now: later},
		{name: "root_first_seen moved", state: editState(t, genuine, "root_first_seen", t0.Add(-100*24*time.Hour)), now: later},
		{name: "mac missing", state: editState(t, genuine, "mac", nil), now: later},
		{name: "mac empty", state: editState(t, genuine, "mac", []byte{}), now: later},
		{name: "mac truncated", state: editState(t, genuine, "mac", bytes.Repeat([]byte{1}, 16)), now: later},
		{name: "mac garbage", state: editState(t, genuine, "mac", bytes.Repeat([]byte{1}, 32)), now: later},
		{name: "mac of another file of the same KEK", state: editState(t, genuine, "mac", otherMAC), now: later},
		// The limit docs/security.md states: a genuine older file of the
		// same KEK is adopted (its use count rolled back), but never past
		// the KEK's max age, which the MAC fixes.
		{name: "replayed older file", state: older, now: later, adopt: true},
		{name: "replayed older file, past max age", state: older, now: expired},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "state.json")
			if err := os.WriteFile(p, tc.state, 0o600); err != nil {
				t.Fatal(err)
			}
			s, adopted := startAdopts(t, e, p, tc.now, ann)
			if adopted != tc.adopt {
				t.Fatalf("adopted %v, want %v", adopted, tc.adopt)
			}
			if !adopted {
				return
			}
			var want uint64
			stateField(t, tc.state, "uses", &want)
			if got := s.cur.Load().uses.Load(); got != want+1 {
				t.Fatalf("adopted KEK has %d uses after one Encrypt, want %d", got, want+1)
			}
		})
	}
}

// A state file path that is not a regular file, or is larger than any state
// file, is refused at once, without reading it: a symlink (even to a genuine
// state file), /dev/zero, a FIFO with no writer, a large sparse file, a
// directory.
func TestStateFileNotRegular(t *testing.T) {
	e := newEnv(t)
	dir := t.TempDir()
	genuinePath := filepath.Join(dir, "genuine.json")
	now := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	s := e.service(func(c *Config) {
		c.StateFile = genuinePath
		c.Now = func() time.Time { return now }
	})
	ann := encrypt(t, s, seed(t)).Annotations[envelope.AnnotationKey]
	const big = 256 << 20
	tests := []struct {
		name string
		make func(t *testing.T, p string)
	}{
		{"symlink to a genuine state file", func(t *testing.T, p string) {
			if err := os.Symlink(genuinePath, p); err != nil {
				t.Fatal(err)
			}
		}},
		{"symlink to /dev/zero", func(t *testing.T, p string) {
			if err := os.Symlink("/dev/zero", p); err != nil {
				t.Fatal(err)
			}
		}},
		{"FIFO", func(t *testing.T, p string) {
			if err := syscall.Mkfifo(p, 0o600); err != nil {
				t.Fatal(err)
			}
		}},
		{"sparse file larger than the limit", func(t *testing.T, p string) {
			b, err := os.ReadFile(genuinePath)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, b, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Truncate(p, big); err != nil {
				t.Fatal(err)
			}
		}},
		{"directory", func(t *testing.T, p string) {
			if err := os.Mkdir(p, 0o700); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "state.json")
			tc.make(t, p)
			e.mu.Lock()
			e.logs.Reset()
			e.mu.Unlock()
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			_, adopted := startAdopts(t, e, p, now.Add(time.Minute), ann)
			runtime.ReadMemStats(&after)
			if adopted {
				t.Fatal("adopted")
			}
			if n := after.TotalAlloc - before.TotalAlloc; n > big/16 {
				t.Fatalf("start-up allocated %d MiB: the file was read", n>>20)
			}
			e.mu.Lock()
			logged := strings.Contains(e.logs.String(), "ignoring unreadable state file")
			e.mu.Unlock()
			if !logged {
				t.Fatal("no warning about the unreadable state file")
			}
		})
	}
}

// A state file of version 1, written before state files were
// authenticated, is not adopted: its KEK is replaced by a new one (one more
// KEK for the next cold start to unwrap), and the reason is logged once,
// without the file's contents. Its root_first_seen, for the current root
// version and not in the future, is carried over once, so the upgrade does
// not restart the root key's rotation clock.
func TestStateFileVersion1(t *testing.T) {
	e := newEnv(t)
	dir := t.TempDir()
	t0 := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	now := t0
	genuinePath := filepath.Join(dir, "genuine.json")
	s1 := e.service(func(c *Config) {
		c.StateFile = genuinePath
		c.Now = func() time.Time { return now }
	})
	ann := encrypt(t, s1, seed(t)).Annotations[envelope.AnnotationKey]
	h1, _ := firstSeen(t, s1)
	b, err := os.ReadFile(genuinePath)
	if err != nil {
		t.Fatal(err)
	}
	v1 := editState(t, editState(t, b, "version", 1), "mac", nil)
	p := filepath.Join(dir, "v1.json")
	if err := os.WriteFile(p, v1, 0o600); err != nil {
		t.Fatal(err)
	}
	e.mu.Lock()
	e.logs.Reset()
	e.mu.Unlock()
	now = t0.Add(24 * time.Hour)
	s2, adopted := startAdopts(t, e, p, now, ann)
	if adopted {
		t.Fatal("a version-1 (unauthenticated) state file was adopted")
	}
	if h, v := firstSeen(t, s2); h != h1 || v != float64(t0.Unix()) {
		t.Fatalf("first seen %s %v after the upgrade, want %s %v", h, v, h1, t0.Unix())
	}
	e.mu.Lock()
	logs := e.logs.String()
	e.mu.Unlock()
	if n := strings.Count(logs, "state file is of version 1"); n != 1 {
		t.Fatalf("upgrade reason logged %d times, want 1:\n%s", n, logs)
	}
	var annB64 string
	stateField(t, v1, "annotation", &annB64)
	if strings.Contains(logs, annB64) {
		t.Fatal("the state file's annotation was logged")
	}
	var version int
	b, err = os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	stateField(t, b, "version", &version)
	if version != 2 {
		t.Fatalf("state file rewritten as version %d, want 2", version)
	}
}

// endless is a reader that never ends, counting what was read from it.
type endless struct{ n int }

func (r *endless) Read(p []byte) (int, error) {
	r.n += len(p)
	return len(p), nil
}

// A state file that grows after its fstat is refused after reading at most
// one byte more than the limit; a file of exactly the limit is read whole.
func TestReadLimited(t *testing.T) {
	r := &endless{}
	if b, err := readLimited(r); !errors.Is(err, errStateUnreadable) || b != nil {
		t.Fatalf("endless reader: %d bytes, %v; want errStateUnreadable", len(b), err)
	}
	if r.n > maxStateSize+1 {
		t.Fatalf("read %d bytes of an endless reader, want at most %d", r.n, maxStateSize+1)
	}
	full := bytes.Repeat([]byte{'x'}, maxStateSize)
	if b, err := readLimited(bytes.NewReader(full)); err != nil || !bytes.Equal(b, full) {
		t.Fatalf("file of exactly the limit: %d bytes, %v", len(b), err)
	}
}

// A version-2 state file written when the format was made (over the
// committed test-only keyset) is adopted by every later release: its MAC
// layout and key derivation never change without a new version.
func TestGoldenStateV2(t *testing.T) {
	dir := t.TempDir()
	for _, f := range []struct{ from, to string }{
		{"testdata/golden-keyset.json", "keyset.json"},
		{"testdata/golden-state-v2.json", "state.json"},
	} {
		b, err := os.ReadFile(f.from)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, f.to), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	golden, err := os.ReadFile(filepath.Join(dir, "state.json"))
	if err != nil {
		t.Fatal(err)
	}
	var ann []byte
	stateField(t, golden, "annotation", &ann)
	fb, err := file.Open(filepath.Join(dir, "keyset.json"))
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, file: fb, spy: keystoretest.NewSpy(fb), logs: new(bytes.Buffer), mu: new(sync.Mutex)}
	written := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	s, adopted := startAdopts(t, e, filepath.Join(dir, "state.json"), written.Add(time.Hour), ann)
	if !adopted {
		t.Fatalf("the golden version-2 state file was not adopted; logs:\n%s", e.logs)
	}
	if got := s.cur.Load().uses.Load(); got != 3+1 {
		t.Fatalf("adopted golden KEK has %d uses after one Encrypt, want 4", got)
	}
	if _, v := firstSeen(t, s); v != float64(written.Unix()) {
		t.Fatalf("golden root_first_seen: first seen %v, want %v", v, written.Unix())
	}
}
