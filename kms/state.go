package kms

import (
	"context"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"syscall"
	"time"

	"github.com/keywarden/keywarden/internal/atomicfile"
	"github.com/keywarden/keywarden/kms/envelope"
)

// stateFile is the state file: the current local KEK in its wrapped form,
// its creation time and use count, and when its root key version was first
// seen, under a MAC. It holds nothing secret: without the root key it is
// just ciphertext.
//
// Version 2 adds MAC: HMAC-SHA256, keyed by stateMACKey of the local KEK it
// describes, over macInput (every other field). So it can be checked only
// once the KEK is unwrapped, and nothing else in the file is believed
// before. Version 1 files (no MAC) are never adopted: see adoptState.
type stateFile struct {
	Version    int       `json:"version"`
	Annotation []byte    `json:"annotation"`
	Created    time.Time `json:"created"`
	Uses       uint64    `json:"uses"`
	// RootFirstSeen is when this keywarden first saw the root key version
	// that wraps Annotation's KEK as the current one: what
	// keywarden_root_key_first_seen_timestamp_seconds exports. It is not the
	// version's creation time, which not every keystore tells.
	RootFirstSeen time.Time `json:"root_first_seen,omitzero"`
	MAC           []byte    `json:"mac,omitempty"`
}

const (
	stateVersion = 2
	maxStateSize = 64 << 10
	// stateMACInfo is the HKDF info of the state file's MAC key: a key of
	// its own for this one purpose, never the KEK itself.
	stateMACInfo = "keywarden/kms state-file HMAC-SHA256 v2"
)

var (
	errMalformedState   = errors.New("malformed state file")
	errStateVersion1    = errors.New("state file is of version 1, which is not authenticated")
	errStateUnreadable  = errors.New("state file is not a regular file within the size limit")
	errStateOtherRoot   = errors.New("state file KEK is not under the current root key")
	errStateUnauthentic = errors.New("state file MAC does not verify")
	errStateSpent       = errors.New("state file KEK is past its bounds")
)

// stateMACKey derives the key of the state file's MAC from a local KEK.
func stateMACKey(kek []byte) ([]byte, error) {
	return hkdf.Key(sha256.New, kek, nil, stateMACInfo, sha256.Size)
}

// macInput is what the MAC covers, in a fixed binary layout: the JSON
// encoding is not canonical (field order, spacing, time zones), the values
// are. Times count as Unix seconds and nanoseconds, the zero time included.
func (st *stateFile) macInput() []byte {
	b := make([]byte, 0, 4+4+len(st.Annotation)+12+8+12)
	b = binary.BigEndian.AppendUint32(b, uint32(st.Version))
	b = binary.BigEndian.AppendUint32(b, uint32(len(st.Annotation)))
	b = append(b, st.Annotation...)
	b = appendTime(b, st.Created)
	b = binary.BigEndian.AppendUint64(b, st.Uses)
	return appendTime(b, st.RootFirstSeen)
}

func appendTime(b []byte, t time.Time) []byte {
	b = binary.BigEndian.AppendUint64(b, uint64(t.Unix()))
	return binary.BigEndian.AppendUint32(b, uint32(t.Nanosecond()))
}

func (st *stateFile) mac(key []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write(st.macInput())
	return m.Sum(nil)
}

// verify checks st's MAC with the state MAC key of the KEK st names.
func (st *stateFile) verify(key []byte) error {
	if !hmac.Equal(st.MAC, st.mac(key)) {
		return errStateUnauthentic
	}
	return nil
}

// within checks the KEK's bounds at now. A KEK "created" in the future would
// never reach max_age: such a file was not written by this clock, so it is
// not trusted either.
func (st *stateFile) within(now time.Time, maxUses uint64, maxAge time.Duration) error {
	if age := now.Sub(st.Created); st.Uses >= maxUses || age < 0 || age >= maxAge {
		return errStateSpent
	}
	return nil
}

// decodeState decodes a version-2 state file whose KEK is wrapped under
// rootKeyID (the configured roots' current key_id: one root's, or
// RootsKeyID of several, so a KEK made under other roots, or the same
// roots in another order, is not adopted), and returns it with its
// annotation decoded. It believes nothing in it: the caller unwraps the
// KEK, then verifies the MAC, then checks the bounds.
func decodeState(b []byte, rootKeyID string) (stateFile, envelope.Annotation, error) {
	var st stateFile
	var none envelope.Annotation
	if err := json.Unmarshal(b, &st); err != nil {
		return stateFile{}, none, errMalformedState
	}
	switch {
	case st.Version == 1:
		return stateFile{}, none, errStateVersion1
	case st.Version != stateVersion || len(st.MAC) != sha256.Size:
		return stateFile{}, none, errMalformedState
	}
	a, err := envelope.DecodeAnnotation(st.Annotation)
	switch {
	case err != nil:
		return stateFile{}, none, errMalformedState
	case a.KeyID != rootKeyID:
		return stateFile{}, none, errStateOtherRoot
	}
	return st, a, nil
}

// readState reads the state file at path: never through a symlink, and only
// a regular file within maxStateSize, checked on the open file before any
// read (so /dev/zero, a FIFO or a huge file costs one open and one fstat).
func readState(path string) ([]byte, error) {
	// O_NONBLOCK: opening a FIFO with no writer returns at once instead
	// of blocking start-up; it changes nothing for a regular file.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%w: file type %v", errStateUnreadable, fi.Mode().Type())
	}
	if fi.Size() > maxStateSize {
		return nil, fmt.Errorf("%w: %d bytes, max %d", errStateUnreadable, fi.Size(), maxStateSize)
	}
	return readLimited(f)
}

// readLimited reads r to its end, but never more than maxStateSize+1 bytes:
// a file that grew after its fstat is refused, not read on.
func readLimited(r io.Reader) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, maxStateSize+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxStateSize {
		return nil, fmt.Errorf("%w: more than %d bytes", errStateUnreadable, maxStateSize)
	}
	return b, nil
}

// adoptState reuses the KEK in the state file if it was wrapped under the
// current root key, its MAC verifies, and it is within its bounds. Callers
// hold mintMu.
func (s *Service) adoptState(ctx context.Context, rootKeyID string) bool {
	if s.cfg.StateFile == "" {
		return false
	}
	b, err := readState(s.cfg.StateFile)
	if errors.Is(err, fs.ErrNotExist) {
		return false
	}
	if err != nil {
		s.log.Warn("ignoring unreadable state file", "path", s.cfg.StateFile, "error", err)
		return false
	}
	now := s.cfg.Now()
	st, a, err := decodeState(b, rootKeyID)
	switch {
	case errors.Is(err, errStateVersion1):
		// Written before state files were authenticated: its KEK costs one
		// more unwrap at the next cold start if it is not reused, far less
		// than trusting its bounds unauthenticated.
		if s.stateV1Logged.CompareAndSwap(false, true) {
			s.log.Warn("state file is of version 1, which is not authenticated: its local KEK is not reused; a new one is made and saved as version 2",
				"path", s.cfg.StateFile)
		}
		// Its root_first_seen alone is carried over, once, so the upgrade
		// does not restart the root key's rotation clock. Believing it
		// gives no one more than deleting the file would (the clock
		// restarts) except an earlier alert; a time after now is refused.
		if at, ok := v1RootFirstSeen(b, rootKeyID, now); ok {
			s.rootSeen.Store(&rootSeen{keyID: rootKeyID, at: at})
		}
		return false
	case errors.Is(err, errMalformedState):
		s.log.Warn("ignoring malformed state file", "path", s.cfg.StateFile)
		return false
	case err != nil:
		return false // made under another root version: mint anew
	}
	// The KEK is unwrapped even when the file says it is spent: only then
	// can the MAC, and so the file's root_first_seen, be checked; and the
	// KEK, the newest under this root version, is then in the cache for
	// the Decrypts of what it sealed.
	k, err := s.unwrapKEK(ctx, st.Annotation, a, st.Created, false)
	if err != nil {
		s.log.Warn("state file KEK did not unwrap; making a new one", "error", err)
		return false
	}
	if err := st.verify(k.stateKey); err != nil {
		// The KEK is genuine but the created time it was built with is
		// not: drop it; a Decrypt that needs it unwraps it again.
		s.cache.Remove(string(st.Annotation))
		s.cfg.Metrics.SetCacheSize(s.cache.Len())
		s.log.Warn("ignoring state file whose MAC does not verify; making a new local KEK", "path", s.cfg.StateFile)
		return false
	}
	// Believed from here on. Even a KEK past its bounds carries when its
	// root version was first seen: keep that for the root key version that
	// is still current, unless it is after now (a clock that jumped back
	// must not make a key look older).
	seen := !st.RootFirstSeen.IsZero() && !st.RootFirstSeen.After(now)
	if seen {
		s.rootSeen.Store(&rootSeen{keyID: rootKeyID, at: st.RootFirstSeen})
	}
	if st.within(now, s.cfg.KEKMaxUses, s.cfg.KEKMaxAge) != nil {
		return false // spent: mint anew
	}
	k.uses.Store(st.Uses)
	s.install(k, "state")
	if !seen {
		// The time install chose now is saved at once, not at the next
		// Encrypt, so a restart before then does not start the clock again.
		s.saveState(k)
	}
	return true
}

// adoptStateDegraded adopts the state file's KEK when keywarden starts with
// several roots and one or more of them cannot tell its key_id (readErr):
// the roots' current key_id is unknown, so adoptState cannot be given it.
// The file's KEK is adopted only if it was made under the configured roots,
// in the same order, and every root that did answer is still at the
// version its copy was made under; it is then unwrapped by any root that
// can (the down one fails and the next serves), its MAC and bounds are
// checked as always, and it becomes the current KEK under the key_id it
// was made under. Without this a restart during a root outage would leave
// keywarden with no KEK at all, and the apiserver, which needs Status's
// key_id and an Encrypt before it reads anything, unable to read even what
// the other roots can unwrap. No KEK is made: that needs every root.
// Status stays not ok until a check reaches every root. Callers hold
// mintMu.
func (s *Service) adoptStateDegraded(ctx context.Context, readErr error) bool {
	if s.cfg.StateFile == "" {
		return false
	}
	b, err := readState(s.cfg.StateFile)
	if err != nil {
		return false // adoptState reports it once every root answers
	}
	var st stateFile
	if json.Unmarshal(b, &st) != nil || st.Version != stateVersion {
		return false
	}
	a, err := envelope.DecodeAnnotation(st.Annotation)
	if err != nil || a.Version != envelope.Version2 {
		return false
	}
	names := make([]string, 0, len(s.roots)+1)
	for _, r := range s.roots {
		names = append(names, r.name)
	}
	if rec := s.cfg.Recovery; rec != nil {
		names = append(names, rec.Name())
	}
	if len(a.Copies) != len(names) {
		return false
	}
	for i, c := range a.Copies {
		if c.Backend != names[i] {
			return false
		}
		if i < len(s.roots) && s.roots[i].keyIDErr == nil && s.roots[i].keyID != c.KeyID {
			return false // a root that answered has rotated since
		}
	}
	if !s.adoptState(ctx, a.KeyID) {
		return false
	}
	s.log.Warn("adopted the state file's local KEK with a root keystore down: no new local KEK can be made until every root answers",
		"key_id", a.KeyID, "error", readErr)
	return true
}

// v1RootFirstSeen returns a version-1 state file's root_first_seen if its
// KEK is wrapped under rootKeyID and the time is set and not after now.
func v1RootFirstSeen(b []byte, rootKeyID string, now time.Time) (time.Time, bool) {
	var st stateFile
	if err := json.Unmarshal(b, &st); err != nil || st.Version != 1 || st.RootFirstSeen.IsZero() || st.RootFirstSeen.After(now) {
		return time.Time{}, false
	}
	if id, _, err := envelope.DecodeKEK(st.Annotation); err != nil || id != rootKeyID {
		return time.Time{}, false
	}
	return st.RootFirstSeen, true
}

// saveState records k, under its MAC. Failing to save costs only an extra
// KEK at the next start, so it is logged, not returned.
func (s *Service) saveState(k *kek) {
	if s.cfg.StateFile == "" {
		return
	}
	uses := k.uses.Load()
	st := stateFile{Version: stateVersion, Annotation: k.annotation, Created: k.created, Uses: uses}
	if seen := s.rootSeen.Load(); seen != nil && seen.keyID == k.rootKeyID {
		st.RootFirstSeen = seen.at
	}
	st.MAC = st.mac(k.stateKey)
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
