package main

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// socketPath returns the path of a unix:///absolute/path listen address.
func socketPath(listen string) (string, error) {
	u, err := url.Parse(listen)
	if err != nil || u.Scheme != "unix" || u.Host != "" || !filepath.IsAbs(u.Path) {
		return "", fmt.Errorf("--listen %q: want unix:///absolute/path", listen)
	}
	return filepath.Clean(u.Path), nil
}

// listenUnix listens on path with the socket 0600 inside a 0700 directory.
// A directory we did not make is tightened only if it holds nothing but our
// socket; anything else is refused rather than chmod'ed. A stale socket is
// removed only if it is a socket and nobody answers on it.
func listenUnix(path string, log *slog.Logger) (*socket, error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create socket directory: %w", err)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("stat socket directory: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		entries, err := os.ReadDir(dir)
		if err != nil {
			return nil, fmt.Errorf("read socket directory: %w", err)
		}
		if len(entries) > 1 || len(entries) == 1 && entries[0].Name() != filepath.Base(path) {
			return nil, fmt.Errorf("socket directory %s has mode %04o and holds other files; give keywarden a dedicated directory (it makes it 0700)", dir, fi.Mode().Perm())
		}
		if err := os.Chmod(dir, 0o700); err != nil {
			return nil, fmt.Errorf("restrict socket directory to 0700: %w", err)
		}
		log.Info("restricted socket directory to 0700", "dir", dir)
	}
	if err := removeStale(path, log); err != nil {
		return nil, err
	}
	old := syscall.Umask(0o177) // the socket is born 0600: no window where others can connect
	ln, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false) // we remove it ourselves, after draining
	s := &socket{Listener: ln, path: path}
	if s.pin, err = pinInode(path); err == nil {
		s.made, err = os.Lstat(path)
	}
	if err != nil {
		_ = ln.Close()
		return nil, fmt.Errorf("identify new socket: %w", err)
	}
	return s, nil
}

// socket is the listener keywarden bound and the file it made.
type socket struct {
	net.Listener
	path string
	pin  *os.File    // keeps the inode allocated until Remove (Linux; nil elsewhere)
	made fs.FileInfo // device and inode of the file we bound
}

// Remove unlinks the socket file if it is still the one we made (same
// device and inode), then drops the pin. While we drain, the listener is
// already closed, so a new instance may find the path dead, replace it and
// serve on it: unlinking by name alone would cut the apiserver off from
// that successor. Check and unlink are two steps (there is no
// unlink-if-inode), so a successor that replaces the file between them
// still loses it; the window is two system calls wide.
func (s *socket) Remove(log *slog.Logger) {
	defer func() {
		if s.pin != nil {
			_ = s.pin.Close()
			s.pin = nil
		}
	}()
	fi, err := os.Lstat(s.path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return
	case err != nil:
		log.Warn("socket not removed", "path", s.path, "error", err)
		return
	case !os.SameFile(s.made, fi):
		log.Info("socket path now belongs to another instance; leaving it", "path", s.path)
		return
	}
	if err := os.Remove(s.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		log.Warn("socket not removed", "path", s.path, "error", err)
	}
}

func removeStale(path string, log *slog.Logger) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("stat %s: %w", path, err)
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("%s exists and is not a socket; refusing to replace it", path)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		_ = c.Close()
		return fmt.Errorf("%s is in use by another process (is keywarden already running?)", path)
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("remove stale socket: %w", err)
	}
	log.Info("removed stale socket", "path", path)
	return nil
}
