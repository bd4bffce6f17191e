package kms

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/keywarden/keywarden/keystore"
	"github.com/keywarden/keywarden/kms/envelope"
)

// errInvalidRequest marks a request that is malformed before any envelope
// parsing: missing or oversized fields, unknown annotations.
var errInvalidRequest = errors.New("invalid request")

// errNoKEK: there is no usable local KEK: none could be made since start-up,
// or the current one's root version was found disabled and no new one could
// be made yet.
var errNoKEK = errors.New("no usable local KEK: none could be made yet under an enabled root key version")

// Code maps an error to the gRPC code kube-apiserver sees. It is the one
// place where error classes become codes (see docs/configuration.md).
func Code(err error) codes.Code {
	switch {
	case err == nil:
		return codes.OK
	case errors.Is(err, context.Canceled):
		return codes.Canceled
	case errors.Is(err, context.DeadlineExceeded):
		return codes.DeadlineExceeded
	case errors.Is(err, errInvalidRequest),
		errors.Is(err, envelope.ErrMalformed),
		errors.Is(err, envelope.ErrVersion),
		errors.Is(err, envelope.ErrAuthFailed),
		errors.Is(err, envelope.ErrTooLarge),
		errors.Is(err, envelope.ErrBadKEKBytes),
		errors.Is(err, keystore.ErrInvalid):
		return codes.InvalidArgument
	case errors.Is(err, keystore.ErrKeyNotFound):
		return codes.NotFound
	case errors.Is(err, keystore.ErrKeyDisabled):
		return codes.FailedPrecondition
	case errors.Is(err, keystore.ErrPermission):
		return codes.PermissionDenied
	case errors.Is(err, keystore.ErrThrottled), errors.Is(err, errOverloaded):
		return codes.ResourceExhausted
	case errors.Is(err, keystore.ErrUnavailable), errors.Is(err, errNoKEK), errors.Is(err, errKEKSpent):
		return codes.Unavailable
	default:
		return codes.Internal
	}
}

// class is the low-cardinality name of an error's class, for metric labels
// and health reasons.
func class(err error) string {
	switch c := Code(err); c {
	case codes.OK:
		return "ok"
	case codes.Internal:
		if errors.Is(err, keystore.ErrConfig) {
			return "config"
		}
		return "internal"
	default:
		return c.String()
	}
}

// toStatus turns err into a gRPC status error. Messages come from our own
// sentinels and wrapping, which never carry key bytes or plaintext.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	return status.Error(Code(err), err.Error())
}
