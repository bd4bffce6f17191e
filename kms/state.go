package kms

import (
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"time"

	"github.com/keywarden/keywarden/internal/atomicfile"
	"github.com/keywarden/keywarden/kms/envelope"
)

// stateV1 is the state file: the current local KEK in its wrapped form only.
// It holds nothing secret: without the root key it is just ciphertext.
type stateV1 struct {
	Version    int       `json:"version"`
	Annotation []byte    `json:"annotation"`
	Created    time.Time `json:"created"`
	Uses       uint64    `json:"uses"`
	// RootFirstSeen is when this keywarden first saw the root key version
	// that wraps Annotation's KEK as the current one: what
	// keywarden_root_key_first_seen_timestamp_seconds exports. It is not the
	// version's creation time, which not every keystore tells. Files written
	// before it existed lack it (the time is then restarted at adoption);
	// earlier keywardens ignore it.
	RootFirstSeen time.Time `json:"root_first_seen,omitzero"`
}

const maxStateSize = 64 << 10

// adoptState reuses the KEK in the state file if it was wrapped under the
// current root key and is within its bounds. Callers hold mintMu.
func (s *Service) adoptState(ctx context.Context, rootKeyID string) bool {
	if s.cfg.StateFile == "" {
		return false
	}
	b, err := os.ReadFile(s.cfg.StateFile)
	if errors.Is(err, fs.ErrNotExist) {
		return false
	}
	if err != nil || len(b) > maxStateSize {
		s.log.Warn("ignoring unreadable state file", "path", s.cfg.StateFile, "error", err)
		return false
	}
	// Even a KEK past its bounds carries when its root version was first
	// seen: keep that for the root key version that is still current.
	at, seen := rootFirstSeen(b, rootKeyID, s.cfg.Now())
	if seen {
		s.rootSeen.Store(&rootSeen{keyID: rootKeyID, at: at})
	}
	st, ct, err := decodeState(b, rootKeyID, s.cfg.Now(), s.cfg.KEKMaxUses, s.cfg.KEKMaxAge)
	if errors.Is(err, errMalformedState) {
		s.log.Warn("ignoring malformed state file", "path", s.cfg.StateFile)
	}
	if err != nil {
		return false // malformed, made under another root version, or spent: mint anew
	}
	k, err := s.unwrapKEK(ctx, st.Annotation, rootKeyID, ct, st.Created)
	if err != nil {
		s.log.Warn("state file KEK did not unwrap; making a new one", "error", err)
		return false
	}
	k.uses.Store(st.Uses)
	s.install(k, "state")
	if !seen {
		// A file from before root_first_seen (or with one not believed):
		// record the time install chose now, not at the next Encrypt, so a
		// restart before then does not start the clock again.
		s.saveState(k)
	}
	return true
}

var (
	errMalformedState = errors.New("malformed state file")
	errStateOtherRoot = errors.New("state file KEK is not under the current root key")
	errStateSpent     = errors.New("state file KEK is past its bounds")
)

// decodeState decodes a state file and checks it against the current root
// key_id and the KEK bounds at now. It makes no keystore call: what it
// accepts still has to unwrap before it is adopted.
func decodeState(b []byte, rootKeyID string, now time.Time, maxUses uint64, maxAge time.Duration) (stateV1, []byte, error) {
	var st stateV1
	if err := json.Unmarshal(b, &st); err != nil || st.Version != 1 {
		return stateV1{}, nil, errMalformedState
	}
	id, ct, err := envelope.DecodeKEK(st.Annotation)
	if err != nil || id != rootKeyID {
		return stateV1{}, nil, errStateOtherRoot
	}
	// A KEK "created" in the future would never reach max_age: such a file
	// was not written by this clock, so it is not trusted either.
	if age := now.Sub(st.Created); st.Uses >= maxUses || age < 0 || age >= maxAge {
		return stateV1{}, nil, errStateSpent
	}
	return st, ct, nil
}

// rootFirstSeen returns the state file's RootFirstSeen if its KEK is wrapped
// under rootKeyID and the time is set and not after now (a clock that
// jumped back, or a hand-edited file, must not make a key look older).
func rootFirstSeen(b []byte, rootKeyID string, now time.Time) (time.Time, bool) {
	var st stateV1
	if err := json.Unmarshal(b, &st); err != nil || st.Version != 1 || st.RootFirstSeen.IsZero() || st.RootFirstSeen.After(now) {
		return time.Time{}, false
	}
	if id, _, err := envelope.DecodeKEK(st.Annotation); err != nil || id != rootKeyID {
		return time.Time{}, false
	}
	return st.RootFirstSeen, true
}

// saveState records k. Failing to save costs only an extra KEK at the next
// start, so it is logged, not returned.
func (s *Service) saveState(k *kek) {
	if s.cfg.StateFile == "" {
		return
	}
	uses := k.uses.Load()
	st := stateV1{Version: 1, Annotation: k.annotation, Created: k.created, Uses: uses}
	if seen := s.rootSeen.Load(); seen != nil && seen.keyID == k.rootKeyID {
		st.RootFirstSeen = seen.at
	}
	b, err := json.Marshal(st)
	if err == nil {
		err = atomicfile.Write(s.cfg.StateFile, b, 0o600)
	}
	if err != nil {
		s.log.Warn("could not save state file", "path", s.cfg.StateFile, "error", err)
		return
	}
	s.savedUses.Store(uses)
}
