package attest

import (
	"context"
	"fmt"
)

// Platform names a kind of hardware root of trust.
type Platform string

// The platforms Palisade verifies.
const (
	PlatformTPM Platform = "tpm"
	PlatformSNP Platform = "sev-snp"
	PlatformTDX Platform = "tdx"
)

// Platforms lists every supported platform, in a stable order.
var Platforms = []Platform{PlatformTPM, PlatformSNP, PlatformTDX}

// Validate reports whether p is a supported platform.
func (p Platform) Validate() error {
	for _, q := range Platforms {
		if p == q {
			return nil
		}
	}
	return fmt.Errorf("platform %q: want one of %q", string(p), Platforms)
}

// MaxBlobSize bounds one evidence blob (an event log is the largest; real
// ones are tens of KiB, firmware with many boot entries a few hundred).
const MaxBlobSize = 1 << 20

// MaxBlobs bounds the number of blobs in one piece of evidence.
const MaxBlobs = 16

// Evidence is what an attester sends: a platform and named blobs whose
// meaning each platform package defines (report, certificates, quote, event
// log …). Nothing in it is trusted until a Verifier returned Verified.
type Evidence struct {
	Platform Platform          `json:"platform"`
	Blobs    map[string][]byte `json:"blobs"`
}

// Blob returns the named blob or a malformed-evidence denial naming it.
func (e *Evidence) Blob(name string) ([]byte, error) {
	b, ok := e.Blobs[name]
	if !ok || len(b) == 0 {
		return nil, Denyf(ClassMalformed, "evidence: blob %q missing", name)
	}
	return b, nil
}

// Check enforces the shape every evidence must have before any platform code
// looks at it: a known platform, bounded count and sizes.
func (e *Evidence) Check(want Platform) error {
	if e == nil {
		return Denyf(ClassMalformed, "evidence: empty")
	}
	if e.Platform != want {
		return Denyf(ClassMalformed, "evidence: platform %q, verifier is for %q", e.Platform, want)
	}
	if len(e.Blobs) > MaxBlobs {
		return Denyf(ClassMalformed, "evidence: %d blobs, at most %d", len(e.Blobs), MaxBlobs)
	}
	for name, b := range e.Blobs {
		if len(b) > MaxBlobSize {
			return Denyf(ClassMalformed, "evidence: blob %q is %d bytes, at most %d", name, len(b), MaxBlobSize)
		}
	}
	return nil
}

// Attester gathers evidence about the machine it runs on.
type Attester interface {
	Platform() Platform
	// Identity returns what a verifier needs to build a challenge before
	// the evidence (TPM: EK certificate and AK public area), or nil for
	// platforms whose evidence needs no challenge.
	Identity(ctx context.Context) ([]byte, error)
	// Attest produces evidence whose report data commits to b,
	// answering challenge (nil when the verifier sent none).
	Attest(ctx context.Context, challenge []byte, b Binding) (*Evidence, error)
}

// Verifier judges evidence of one platform.
type Verifier interface {
	Platform() Platform
	// Challenge builds a challenge for an attester that announced
	// identity. It returns what to send to the attester and what the
	// caller keeps and passes back in Input.Kept; both are nil for
	// platforms without a challenge step.
	Challenge(identity []byte) (send, keep []byte, err error)
	// Verify checks ev in the order of the protocol (chain of trust,
	// revocation and TCB, platform policy, freshness and binding,
	// measurements) and denies on the first failure with an *Error.
	Verify(ctx context.Context, ev *Evidence, in Input) (*Verified, error)
}

// Input is what a verifier needs besides the evidence.
type Input struct {
	// Binding is what the evidence's report data must commit to: the
	// verifier side computes it from its own view of the session.
	Binding Binding
	// Identity is what the attester announced before the challenge.
	Identity []byte
	// Kept is what Challenge told the caller to keep.
	Kept []byte
	// Reference holds the accepted values of the attester's profile.
	Reference *Reference
}

// Verified is what a verifier proved. Every field has been checked.
type Verified struct {
	Platform Platform `json:"platform"`
	Profile  string   `json:"profile"`
	// HardwareID identifies the chip (SNP CHIP_ID, TDX PCK FMSPC+PPID
	// where present, TPM EK public key digest), hex.
	HardwareID string `json:"hardware_id"`
	// TCB is the verified TCB or firmware level in the platform's notation.
	TCB string `json:"tcb"`
	// Measurements are the measured values that matched, by name, hex.
	Measurements map[string]string `json:"measurements"`
}
