// Package secretfile reads the small files that hold keywarden's secrets (a
// file keystore's keyset, a PKCS#11 PIN, a Vault token, AppRole role and
// secret IDs) under one rule: a regular file, with no permission bits for
// group or others (0600 or stricter), owned by the process's user or by
// root. Anyone else who could write such a file could choose our secret;
// anyone who could read it could take it.
//
// Symbolic links are followed (Kubernetes mounts a Secret's files through
// them); the rule applies to the file they lead to, checked on the open
// descriptor, so the file read is the file checked. Errors name the file
// and what is wrong with it, never its contents.
package secretfile

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"syscall"

	"github.com/keywarden/keywarden/keystore"
)

// Check applies the rule to fi, the result of stat on the opened file at
// path; what names the file's role in messages ("vault token-file"). The
// error is keystore.ErrConfig.
func Check(what, path string, fi fs.FileInfo) error {
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%w: %s %s is not a regular file", keystore.ErrConfig, what, path)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return fmt.Errorf("%w: %s %s has mode %04o; it holds a secret and must not be readable or writable by group or others (chmod 600)", keystore.ErrConfig, what, path, perm)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Errorf("%w: %s %s: cannot tell its owner", keystore.ErrConfig, what, path)
	}
	if uid := os.Geteuid(); int(st.Uid) != uid && st.Uid != 0 {
		return fmt.Errorf("%w: %s %s is owned by uid %d; it must belong to the user this process runs as (uid %d) or to root: run keywarden and kmsctl as the file's owner, or chown it", keystore.ErrConfig, what, path, st.Uid, uid)
	}
	return nil
}

// Read opens path, checks it with Check and returns its contents, which
// must be at most limit bytes. A missing or unreadable file is
// keystore.ErrConfig too, wrapping the fs error (errors.Is(err,
// fs.ErrNotExist) works).
func Read(what, path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %s %s: %w", keystore.ErrConfig, what, path, cause(err))
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("%w: %s %s: %w", keystore.ErrConfig, what, path, cause(err))
	}
	if err := Check(what, path, fi); err != nil {
		return nil, err
	}
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, fmt.Errorf("%w: read %s %s: %w", keystore.ErrConfig, what, path, cause(err))
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%w: %s %s is over %d bytes", keystore.ErrConfig, what, path, limit)
	}
	return b, nil
}

// cause drops the path an *fs.PathError repeats.
func cause(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}
