package main

import (
	"os"

	"golang.org/x/sys/unix"
)

// pinInode holds the socket file's inode with an O_PATH descriptor (a
// socket cannot be opened otherwise). While it is open the inode cannot be
// freed, so no later file on the device can get its number: without the
// pin, ext4 gives a successor's socket the number of the one it replaced,
// and a device and inode comparison would take it for ours.
func pinInode(path string) (*os.File, error) {
	fd, err := unix.Open(path, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	return os.NewFile(uintptr(fd), path), nil
}
