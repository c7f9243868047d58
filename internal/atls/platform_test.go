package atls

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"

	"github.com/palisade-cc/palisade/internal/attest"
)

// The test-only platform. Its evidence is an Ed25519 signature by a pinned
// test key over report data (Binding.SHA512()), a 48-byte measurement and
// the verifier's 32-byte challenge. It is not a fake of SNP: it reuses the
// value attest.PlatformSNP only because the vocabulary admits the three real
// platforms, and its reference is Reference.SNP.Measurement.
const testPlatform = attest.PlatformSNP

const (
	blobReport    = "test-report"
	blobSignature = "test-signature"
	// testSigDomain separates the test signatures from anything else.
	testSigDomain   = "palisade-atls-test-evidence-v1"
	testReportData  = 64
	testMeasurement = 48
	testChallenge   = 32
	testReportSize  = testReportData + testMeasurement + testChallenge
	testProfile     = "test-profile"
)

// testAttester signs honest test evidence unless one of its knobs makes it
// the adversary's software (which never has another key than the one it
// was given).
type testAttester struct {
	key         ed25519.PrivateKey
	measurement []byte
	// mutate changes the binding before it is signed.
	mutate func(*attest.Binding)
	// ignoreChallenge answers with zeros instead of the challenge.
	ignoreChallenge bool
	// tamper post-processes the signed evidence.
	tamper func(*attest.Evidence) *attest.Evidence
	// replay, if set, is returned instead of fresh evidence.
	replay *attest.Evidence

	calls atomic.Int32
	mu    sync.Mutex
	last  *attest.Evidence
}

var _ attest.Attester = (*testAttester)(nil)

func (a *testAttester) Platform() attest.Platform { return testPlatform }

func (a *testAttester) Identity(context.Context) ([]byte, error) {
	return a.key.Public().(ed25519.PublicKey), nil
}

func (a *testAttester) Attest(_ context.Context, challenge []byte, b attest.Binding) (*attest.Evidence, error) {
	a.calls.Add(1)
	if a.replay != nil {
		return a.replay, nil
	}
	if a.mutate != nil {
		a.mutate(&b)
	}
	if len(challenge) != testChallenge && challenge != nil {
		return nil, fmt.Errorf("test attester: challenge %d bytes, want %d or none", len(challenge), testChallenge)
	}
	if a.ignoreChallenge || challenge == nil {
		challenge = make([]byte, testChallenge)
	}
	rd := b.SHA512()
	report := append(append(append([]byte{}, rd[:]...), a.measurement...), challenge...)
	sig := ed25519.Sign(a.key, append([]byte(testSigDomain), report...))
	ev := &attest.Evidence{Platform: testPlatform, Blobs: map[string][]byte{blobReport: report, blobSignature: sig}}
	if a.tamper != nil {
		ev = a.tamper(ev)
	}
	a.mu.Lock()
	a.last = ev
	a.mu.Unlock()
	return ev, nil
}

func (a *testAttester) lastEvidence() *attest.Evidence {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.last
}

// testVerifier is pinned to the test key. It deliberately leaves
// Evidence.Check to atls, so the tests prove atls's own bounds.
type testVerifier struct {
	pub ed25519.PublicKey
	// noChallenge makes it a platform without a challenge step (like
	// SEV-SNP and TDX): freshness then rests on the binding alone.
	noChallenge bool
}

var _ attest.Verifier = (*testVerifier)(nil)

func (v *testVerifier) Platform() attest.Platform { return testPlatform }

func (v *testVerifier) Challenge(identity []byte) (send, keep []byte, err error) {
	if len(identity) != ed25519.PublicKeySize {
		return nil, nil, attest.Denyf(attest.ClassMalformed, "identity: %d bytes, want %d", len(identity), ed25519.PublicKeySize)
	}
	if v.noChallenge {
		return nil, nil, nil
	}
	c := make([]byte, testChallenge)
	if _, err := rand.Read(c); err != nil {
		return nil, nil, err
	}
	return c, c, nil
}

func (v *testVerifier) Verify(_ context.Context, ev *attest.Evidence, in attest.Input) (*attest.Verified, error) {
	if err := in.Binding.Validate(); err != nil {
		return nil, attest.Deny(attest.ClassInternal, err)
	}
	if in.Reference == nil || in.Reference.SNP == nil {
		return nil, attest.Denyf(attest.ClassInternal, "no test reference")
	}
	report, err := ev.Blob(blobReport)
	if err != nil {
		return nil, err
	}
	sig, err := ev.Blob(blobSignature)
	if err != nil {
		return nil, err
	}
	if len(report) != testReportSize {
		return nil, attest.Denyf(attest.ClassMalformed, "blob %q: %d bytes, want %d", blobReport, len(report), testReportSize)
	}
	if len(sig) != ed25519.SignatureSize {
		return nil, attest.Denyf(attest.ClassMalformed, "blob %q: %d bytes, want %d", blobSignature, len(sig), ed25519.SignatureSize)
	}
	// Chain of trust: the pinned key, never one from the evidence.
	if !bytes.Equal(in.Identity, v.pub) {
		return nil, attest.Denyf(attest.ClassChain, "identity is not the pinned test key")
	}
	if !ed25519.Verify(v.pub, append([]byte(testSigDomain), report...), sig) {
		return nil, attest.Denyf(attest.ClassChain, "blob %q: signature does not verify with the pinned test key", blobSignature)
	}
	// Freshness and binding.
	want := in.Kept
	if v.noChallenge {
		want = make([]byte, testChallenge)
	}
	if len(want) != testChallenge || !bytes.Equal(report[testReportData+testMeasurement:], want) {
		return nil, attest.Denyf(attest.ClassBinding, "challenge not answered")
	}
	rd := in.Binding.SHA512()
	if !bytes.Equal(report[:testReportData], rd[:]) {
		return nil, attest.Denyf(attest.ClassBinding, "report data does not commit to this session")
	}
	m := report[testReportData : testReportData+testMeasurement]
	if !bytes.Equal(m, in.Reference.SNP.Measurement) {
		return nil, attest.Denyf(attest.ClassMeasurement, "measurement %x, want %x", m, []byte(in.Reference.SNP.Measurement))
	}
	return &attest.Verified{
		Platform:     testPlatform,
		Profile:      in.Reference.Profile,
		HardwareID:   hex.EncodeToString(v.pub),
		TCB:          "test",
		Measurements: map[string]string{"measurement": hex.EncodeToString(m)},
	}, nil
}

// seedEnv hands the test key's seed to a re-executed child process, so a
// server in another process is pinned to the same key.
const seedEnv = "PALISADE_ATLS_TEST_SEED"

// testKeys is the pinned test key, made once per test process.
var testKeys = sync.OnceValue(func() ed25519.PrivateKey {
	if s, err := hex.DecodeString(os.Getenv(seedEnv)); err == nil && len(s) == ed25519.SeedSize {
		return ed25519.NewKeyFromSeed(s)
	}
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		panic(err)
	}
	return k
})

var goodMeasurement = bytes.Repeat([]byte{0x5a}, testMeasurement)

var errNotKeyd = errors.New("role is not keyd")
