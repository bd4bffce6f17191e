package gcpkms

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"cloud.google.com/go/kms/apiv1/kmspb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// fakeKMS is a fake of the Cloud KMS gRPC service (the generated
// kmspb.KeyManagementServiceServer), in memory, for the calls keywarden
// makes. Tests serve it on 127.0.0.1 and reach it through the real client
// library (cloud.google.com/go/kms/apiv1) over gRPC. It behaves like Cloud KMS
// where keywarden can tell: symmetric AES-256-GCM versions, Encrypt on a key
// or a version, Decrypt that picks the version from the ciphertext, request
// and response CRC32C checksums, version states and the errors they give
// (INVALID_ARGUMENT for a bad ciphertext or AAD, FAILED_PRECONDITION for a
// version that is not enabled, NOT_FOUND), and paged listing. It can also
// fail or hang a method on demand.
type fakeKMS struct {
	kmspb.UnimplementedKeyManagementServiceServer

	mu     sync.Mutex
	keys   map[string]*fakeKey
	faults map[string]fault // method name → fault
	calls  map[string]int
}

type fault struct {
	code  codes.Code
	count int  // fail this many calls
	hang  bool // block until the client gives up
}

type fakeKey struct {
	name     string
	tag      [8]byte // in every ciphertext, so another key's ciphertext is refused
	purpose  kmspb.CryptoKey_CryptoKeyPurpose
	primary  int // 0: none
	versions []*fakeVersion
}

type fakeVersion struct {
	aead    cipher.AEAD // random-nonce AES-GCM (as FIPS 140-only allows); nil once destroyed
	state   kmspb.CryptoKeyVersion_CryptoKeyVersionState
	created time.Time
}

const fakeHeader = 8 + 4 + 12 // tag, version, nonce

func newFakeKMS() *fakeKMS {
	return &fakeKMS{keys: map[string]*fakeKey{}, faults: map[string]fault{}, calls: map[string]int{}}
}

// serve starts the fake on a 127.0.0.1 listener and returns its address.
func (f *fakeKMS) serve(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	kmspb.RegisterKeyManagementServiceServer(s, f)
	go func() { _ = s.Serve(ln) }()
	t.Cleanup(s.Stop)
	return ln.Addr().String()
}

// createKey makes a CryptoKey with one enabled primary version.
func (f *fakeKMS) createKey(name string, purpose kmspb.CryptoKey_CryptoKeyPurpose) {
	f.mu.Lock()
	defer f.mu.Unlock()
	k := &fakeKey{name: name, purpose: purpose}
	_, _ = rand.Read(k.tag[:])
	k.addVersion()
	k.primary = 1
	f.keys[name] = k
}

func (k *fakeKey) addVersion() *fakeVersion {
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	block, _ := aes.NewCipher(key)
	a, _ := cipher.NewGCMWithRandomNonce(block)
	v := &fakeVersion{aead: a, state: kmspb.CryptoKeyVersion_ENABLED, created: time.Now()}
	k.versions = append(k.versions, v)
	return v
}

func (k *fakeKey) versionName(n int) string {
	return k.name + "/cryptoKeyVersions/" + strconv.Itoa(n)
}

func (k *fakeKey) versionProto(n int) *kmspb.CryptoKeyVersion {
	v := k.versions[n-1]
	return &kmspb.CryptoKeyVersion{Name: k.versionName(n), State: v.state, CreateTime: timestamppb.New(v.created),
		Algorithm: kmspb.CryptoKeyVersion_GOOGLE_SYMMETRIC_ENCRYPTION}
}

// setFault makes method fail (or hang) for its next count calls.
func (f *fakeKMS) setFault(method string, fl fault) {
	f.mu.Lock()
	f.faults[method] = fl
	f.mu.Unlock()
}

func (f *fakeKMS) callCount(method string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[method]
}

// enter counts a call and applies its fault. It returns with f.mu held
// unless it returns an error.
func (f *fakeKMS) enter(ctx context.Context, method string) error {
	f.mu.Lock()
	f.calls[method]++
	fl := f.faults[method]
	if fl.count > 0 {
		fl.count--
		f.faults[method] = fl
		f.mu.Unlock()
		if fl.hang {
			select {
			case <-ctx.Done():
			case <-time.After(10 * time.Second):
			}
			return status.Error(codes.DeadlineExceeded, "hung")
		}
		return status.Error(fl.code, "injected fault")
	}
	return nil
}

func (f *fakeKMS) key(name string) (*fakeKey, error) {
	k, ok := f.keys[name]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "CryptoKey %s not found.", name)
	}
	return k, nil
}

// version resolves a CryptoKeyVersion name.
func (f *fakeKMS) version(name string) (*fakeKey, int, error) {
	keyName, id, ok := strings.Cut(name, "/cryptoKeyVersions/")
	n, err := strconv.Atoi(id)
	if !ok || err != nil {
		return nil, 0, status.Errorf(codes.InvalidArgument, "bad version name %q", name)
	}
	k, err := f.key(keyName)
	if err != nil {
		return nil, 0, err
	}
	if n < 1 || n > len(k.versions) {
		return nil, 0, status.Errorf(codes.NotFound, "CryptoKeyVersion %s not found.", name)
	}
	return k, n, nil
}

func checksum(b []byte) int64 { return int64(crc32.Checksum(b, crcTable)) }

func badCRC(v *wrapperspb.Int64Value, b []byte) bool { return v != nil && v.GetValue() != checksum(b) }

func (f *fakeKMS) Encrypt(ctx context.Context, req *kmspb.EncryptRequest) (*kmspb.EncryptResponse, error) {
	if err := f.enter(ctx, "Encrypt"); err != nil {
		return nil, err
	}
	defer f.mu.Unlock()
	if badCRC(req.GetPlaintextCrc32C(), req.GetPlaintext()) || badCRC(req.GetAdditionalAuthenticatedDataCrc32C(), req.GetAdditionalAuthenticatedData()) {
		return nil, status.Error(codes.InvalidArgument, "The checksum in field plaintext_crc32c did not match the data in field plaintext.")
	}
	var k *fakeKey
	var n int
	var err error
	if strings.Contains(req.GetName(), "/cryptoKeyVersions/") {
		k, n, err = f.version(req.GetName())
	} else if k, err = f.key(req.GetName()); err == nil {
		n = k.primary
	}
	if err != nil {
		return nil, err
	}
	if k.purpose != kmspb.CryptoKey_ENCRYPT_DECRYPT {
		return nil, status.Errorf(codes.FailedPrecondition, "%s is not an ENCRYPT_DECRYPT key", k.name)
	}
	v := k.versions[n-1]
	if v.state != kmspb.CryptoKeyVersion_ENABLED {
		return nil, status.Errorf(codes.FailedPrecondition, "%s is not enabled, current state is: %s.", k.versionName(n), v.state)
	}
	hdr := make([]byte, 12, fakeHeader+len(req.GetPlaintext())+16)
	copy(hdr, k.tag[:])
	binary.BigEndian.PutUint32(hdr[8:], uint32(n))
	ct := v.aead.Seal(hdr, nil, req.GetPlaintext(), append(hdr[:12:12], req.GetAdditionalAuthenticatedData()...))
	return &kmspb.EncryptResponse{
		Name:                    k.versionName(n),
		Ciphertext:              ct,
		CiphertextCrc32C:        wrapperspb.Int64(checksum(ct)),
		VerifiedPlaintextCrc32C: req.GetPlaintextCrc32C() != nil,
		VerifiedAdditionalAuthenticatedDataCrc32C: req.GetAdditionalAuthenticatedDataCrc32C() != nil,
		ProtectionLevel: kmspb.ProtectionLevel_SOFTWARE,
	}, nil
}

func (f *fakeKMS) Decrypt(ctx context.Context, req *kmspb.DecryptRequest) (*kmspb.DecryptResponse, error) {
	if err := f.enter(ctx, "Decrypt"); err != nil {
		return nil, err
	}
	defer f.mu.Unlock()
	if badCRC(req.GetCiphertextCrc32C(), req.GetCiphertext()) || badCRC(req.GetAdditionalAuthenticatedDataCrc32C(), req.GetAdditionalAuthenticatedData()) {
		return nil, status.Error(codes.InvalidArgument, "The checksum in field ciphertext_crc32c did not match the data in field ciphertext.")
	}
	k, err := f.key(req.GetName())
	if err != nil {
		return nil, err
	}
	invalid := status.Error(codes.InvalidArgument, "Decryption failed: the ciphertext is invalid.")
	ct := req.GetCiphertext()
	if len(ct) < fakeHeader+16 || [8]byte(ct[:8]) != k.tag {
		return nil, invalid
	}
	n := int(binary.BigEndian.Uint32(ct[8:12]))
	if n < 1 || n > len(k.versions) {
		return nil, invalid
	}
	v := k.versions[n-1]
	if v.state != kmspb.CryptoKeyVersion_ENABLED {
		return nil, status.Errorf(codes.FailedPrecondition, "%s is not enabled, current state is: %s.", k.versionName(n), v.state)
	}
	pt, err := v.aead.Open(nil, nil, ct[12:], append(ct[:12:12], req.GetAdditionalAuthenticatedData()...))
	if err != nil {
		return nil, invalid
	}
	return &kmspb.DecryptResponse{Plaintext: pt, PlaintextCrc32C: wrapperspb.Int64(checksum(pt)), UsedPrimary: n == k.primary,
		ProtectionLevel: kmspb.ProtectionLevel_SOFTWARE}, nil
}

func (f *fakeKMS) GetCryptoKey(ctx context.Context, req *kmspb.GetCryptoKeyRequest) (*kmspb.CryptoKey, error) {
	if err := f.enter(ctx, "GetCryptoKey"); err != nil {
		return nil, err
	}
	defer f.mu.Unlock()
	k, err := f.key(req.GetName())
	if err != nil {
		return nil, err
	}
	return f.keyProto(k), nil
}

func (f *fakeKMS) keyProto(k *fakeKey) *kmspb.CryptoKey {
	ck := &kmspb.CryptoKey{Name: k.name, Purpose: k.purpose}
	if k.primary > 0 {
		ck.Primary = k.versionProto(k.primary)
	}
	return ck
}

const fakePageSize = 2

func (f *fakeKMS) ListCryptoKeyVersions(ctx context.Context, req *kmspb.ListCryptoKeyVersionsRequest) (*kmspb.ListCryptoKeyVersionsResponse, error) {
	if err := f.enter(ctx, "ListCryptoKeyVersions"); err != nil {
		return nil, err
	}
	defer f.mu.Unlock()
	k, err := f.key(req.GetParent())
	if err != nil {
		return nil, err
	}
	start := 0
	if tok := req.GetPageToken(); tok != "" {
		if start, err = strconv.Atoi(tok); err != nil {
			return nil, status.Error(codes.InvalidArgument, "bad page token")
		}
	}
	resp := &kmspb.ListCryptoKeyVersionsResponse{TotalSize: int32(len(k.versions))}
	for i := start; i < len(k.versions) && i < start+fakePageSize; i++ {
		resp.CryptoKeyVersions = append(resp.CryptoKeyVersions, k.versionProto(i+1))
	}
	if start+fakePageSize < len(k.versions) {
		resp.NextPageToken = strconv.Itoa(start + fakePageSize)
	}
	return resp, nil
}

func (f *fakeKMS) CreateCryptoKeyVersion(ctx context.Context, req *kmspb.CreateCryptoKeyVersionRequest) (*kmspb.CryptoKeyVersion, error) {
	if err := f.enter(ctx, "CreateCryptoKeyVersion"); err != nil {
		return nil, err
	}
	defer f.mu.Unlock()
	k, err := f.key(req.GetParent())
	if err != nil {
		return nil, err
	}
	k.addVersion()
	return k.versionProto(len(k.versions)), nil
}

func (f *fakeKMS) UpdateCryptoKeyPrimaryVersion(ctx context.Context, req *kmspb.UpdateCryptoKeyPrimaryVersionRequest) (*kmspb.CryptoKey, error) {
	if err := f.enter(ctx, "UpdateCryptoKeyPrimaryVersion"); err != nil {
		return nil, err
	}
	defer f.mu.Unlock()
	k, n, err := f.version(req.GetName() + "/cryptoKeyVersions/" + req.GetCryptoKeyVersionId())
	if err != nil {
		return nil, err
	}
	if k.versions[n-1].state != kmspb.CryptoKeyVersion_ENABLED {
		return nil, status.Errorf(codes.FailedPrecondition, "%s is not enabled", k.versionName(n))
	}
	k.primary = n
	return f.keyProto(k), nil
}

func (f *fakeKMS) UpdateCryptoKeyVersion(ctx context.Context, req *kmspb.UpdateCryptoKeyVersionRequest) (*kmspb.CryptoKeyVersion, error) {
	if err := f.enter(ctx, "UpdateCryptoKeyVersion"); err != nil {
		return nil, err
	}
	defer f.mu.Unlock()
	if p := req.GetUpdateMask().GetPaths(); len(p) != 1 || p[0] != "state" {
		return nil, status.Errorf(codes.InvalidArgument, "update_mask %v: only state is supported here", p)
	}
	k, n, err := f.version(req.GetCryptoKeyVersion().GetName())
	if err != nil {
		return nil, err
	}
	v := k.versions[n-1]
	want := req.GetCryptoKeyVersion().GetState()
	switch {
	case want != kmspb.CryptoKeyVersion_ENABLED && want != kmspb.CryptoKeyVersion_DISABLED:
		return nil, status.Errorf(codes.InvalidArgument, "cannot set state %s", want)
	case v.state != kmspb.CryptoKeyVersion_ENABLED && v.state != kmspb.CryptoKeyVersion_DISABLED:
		return nil, status.Errorf(codes.FailedPrecondition, "%s is %s", k.versionName(n), v.state)
	case want == kmspb.CryptoKeyVersion_DISABLED && n == k.primary:
		// Cloud KMS allows it (the key then has no usable primary); it is
		// keywarden that refuses, before calling.
	}
	v.state = want
	return k.versionProto(n), nil
}

func (f *fakeKMS) DestroyCryptoKeyVersion(ctx context.Context, req *kmspb.DestroyCryptoKeyVersionRequest) (*kmspb.CryptoKeyVersion, error) {
	if err := f.enter(ctx, "DestroyCryptoKeyVersion"); err != nil {
		return nil, err
	}
	defer f.mu.Unlock()
	k, n, err := f.version(req.GetName())
	if err != nil {
		return nil, err
	}
	v := k.versions[n-1]
	if v.state == kmspb.CryptoKeyVersion_DESTROY_SCHEDULED || v.state == kmspb.CryptoKeyVersion_DESTROYED {
		return nil, status.Errorf(codes.FailedPrecondition, "%s is already %s", k.versionName(n), v.state)
	}
	v.state = kmspb.CryptoKeyVersion_DESTROY_SCHEDULED
	return k.versionProto(n), nil
}

// fakeKeyName is a fresh CryptoKey name.
func fakeKeyName(i int64) string {
	return fmt.Sprintf("projects/kw-test/locations/europe-west1/keyRings/ring/cryptoKeys/k%d", i)
}
