//go:build !nopkcs11

package pkcs11

import (
	"errors"
	"strings"

	p11 "github.com/miekg/pkcs11"

	"github.com/keywarden/keywarden/keystore"
)

// fault sorts a failed library call by what the backend should do next.
type fault uint8

const (
	faultOther    fault = iota // ErrUnavailable; retrying at once will not help
	faultData                  // ErrInvalid: the token refused this ciphertext or input
	faultDisabled              // ErrKeyDisabled: CKA_ENCRYPT/CKA_DECRYPT are off
	faultHandle                // object handles went stale: find the objects again
	faultSession               // session, login, token or library trouble: reopen
	faultPIN                   // ErrPermission
	faultConfig                // ErrConfig: the token cannot do what we ask
)

// ckrAEADDecryptFailed is PKCS#11 3.0's CKR_AEAD_DECRYPT_FAILED, which the
// 2.40 headers vendored by miekg/pkcs11 lack.
const ckrAEADDecryptFailed = p11.Error(0x35)

func faultOfCode(ck p11.Error) fault {
	switch ck {
	case p11.CKR_ENCRYPTED_DATA_INVALID, p11.CKR_ENCRYPTED_DATA_LEN_RANGE, ckrAEADDecryptFailed,
		p11.CKR_DATA_INVALID, p11.CKR_DATA_LEN_RANGE:
		return faultData
	case p11.CKR_KEY_FUNCTION_NOT_PERMITTED:
		return faultDisabled
	case p11.CKR_KEY_HANDLE_INVALID, p11.CKR_OBJECT_HANDLE_INVALID:
		return faultHandle
	case p11.CKR_SESSION_HANDLE_INVALID, p11.CKR_SESSION_CLOSED, p11.CKR_USER_NOT_LOGGED_IN,
		p11.CKR_TOKEN_NOT_PRESENT, p11.CKR_TOKEN_NOT_RECOGNIZED, p11.CKR_DEVICE_REMOVED,
		p11.CKR_DEVICE_ERROR, p11.CKR_DEVICE_MEMORY, p11.CKR_HOST_MEMORY,
		p11.CKR_CRYPTOKI_NOT_INITIALIZED, p11.CKR_SLOT_ID_INVALID,
		p11.CKR_GENERAL_ERROR, p11.CKR_FUNCTION_FAILED,
		p11.CKR_OPERATION_ACTIVE, p11.CKR_OPERATION_NOT_INITIALIZED:
		return faultSession
	case p11.CKR_PIN_INCORRECT, p11.CKR_PIN_INVALID, p11.CKR_PIN_LEN_RANGE, p11.CKR_PIN_EXPIRED,
		p11.CKR_PIN_LOCKED, p11.CKR_USER_PIN_NOT_INITIALIZED:
		return faultPIN
	case p11.CKR_MECHANISM_INVALID, p11.CKR_MECHANISM_PARAM_INVALID, p11.CKR_KEY_TYPE_INCONSISTENT,
		p11.CKR_KEY_SIZE_RANGE, p11.CKR_TEMPLATE_INCOMPLETE, p11.CKR_TEMPLATE_INCONSISTENT,
		p11.CKR_ATTRIBUTE_READ_ONLY, p11.CKR_ATTRIBUTE_TYPE_INVALID, p11.CKR_ATTRIBUTE_VALUE_INVALID,
		p11.CKR_TOKEN_WRITE_PROTECTED, p11.CKR_SESSION_READ_ONLY, p11.CKR_FUNCTION_NOT_SUPPORTED:
		return faultConfig
	default:
		return faultOther
	}
}

func (f fault) sentinel() error {
	switch f {
	case faultData:
		return keystore.ErrInvalid
	case faultDisabled:
		return keystore.ErrKeyDisabled
	case faultPIN:
		return keystore.ErrPermission
	case faultConfig:
		return keystore.ErrConfig
	default:
		return keystore.ErrUnavailable
	}
}

// opError is a failed PKCS#11 call. It matches its keystore sentinel and the
// library's p11.Error with errors.Is/As. Its text names the call and the CKR_
// code, nothing else: no PIN, no key bytes, no data.
type opError struct {
	op    string
	fault fault
	err   error
}

func (e *opError) Error() string {
	msg := e.err.Error()
	// miekg/pkcs11 leaves the name out for codes newer than its headers.
	var ck p11.Error
	if errors.As(e.err, &ck) && strings.HasSuffix(ck.Error(), ": ") {
		name := "unknown CKR code"
		if ck == ckrAEADDecryptFailed {
			name = "CKR_AEAD_DECRYPT_FAILED"
		}
		msg = strings.Replace(msg, ck.Error(), ck.Error()+name, 1)
	}
	return e.fault.sentinel().Error() + ": PKCS#11 " + e.op + ": " + msg
}

func (e *opError) Unwrap() []error { return []error{e.fault.sentinel(), e.err} }

// classify wraps err from library call op into an *opError. Errors that are
// already classified, or are ours, pass through.
func classify(op string, err error) error {
	if err == nil {
		return nil
	}
	var oe *opError
	if errors.As(err, &oe) {
		return err
	}
	var ck p11.Error
	if errors.As(err, &ck) {
		return &opError{op: op, fault: faultOfCode(ck), err: ck}
	}
	if errors.Is(err, errPanic) {
		return &opError{op: op, fault: faultSession, err: errors.New("library call panicked")}
	}
	return err
}

// faultOf reports the fault of a classified error; anything else is
// faultOther.
func faultOf(err error) fault {
	var oe *opError
	if errors.As(err, &oe) {
		return oe.fault
	}
	return faultOther
}

// sessionFault marks failures outside the library that still mean "reopen
// and look again", such as the token missing from the slot list.
func sessionFault(op string, err error) error {
	return &opError{op: op, fault: faultSession, err: err}
}
