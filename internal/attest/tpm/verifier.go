package tpm

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"io"
	"maps"
	"slices"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/palisade-cc/palisade/internal/attest"
)

// Verifier judges TPM evidence. Roots must be set; the other fields default
// to production.
type Verifier struct {
	// Roots are the pinned EK roots: the TPM vendors' CAs. A root is never
	// taken from the evidence.
	Roots *x509.CertPool
	// Intermediates are the vendors' intermediate CAs, if their EK
	// certificates do not chain to a root directly.
	Intermediates *x509.CertPool
	// Now is the time certificates are checked at; nil means time.Now.
	Now func() time.Time
	// Rand makes the credential's secret and seed; nil means crypto/rand.
	Rand io.Reader
	// Cache, if set, remembers the EK chains and AKs this verifier checked
	// (see Cache); nil checks them in Challenge and again in Verify.
	Cache *Cache
}

// NewVerifier returns a Verifier pinned to roots (and intermediates, which
// may be nil), with a chain cache sized for a boot storm.
func NewVerifier(roots, intermediates *x509.CertPool) *Verifier {
	return &Verifier{Roots: roots, Intermediates: intermediates, Cache: NewCache(4096)}
}

// checkEK verifies cert's chain to the pinned roots, or finds that this
// verifier already did, against the same pools, recently.
func (v *Verifier) checkEK(cert *x509.Certificate) error {
	now := v.now()
	if v.Cache.chainHit(cert, v.Roots, v.Intermediates, now) {
		return nil
	}
	if err := verifyEKCert(cert, v.Roots, v.Intermediates, now); err != nil {
		return err
	}
	v.Cache.addChain(cert, v.Roots, v.Intermediates, now)
	return nil
}

var _ attest.Verifier = (*Verifier)(nil)

// Platform is attest.PlatformTPM.
func (v *Verifier) Platform() attest.Platform { return attest.PlatformTPM }

func (v *Verifier) now() time.Time {
	if v.Now != nil {
		return v.Now()
	}
	return time.Now()
}

func (v *Verifier) rand() io.Reader {
	if v.Rand != nil {
		return v.Rand
	}
	return rand.Reader
}

// Challenge checks the announced EK certificate and AK, and makes a
// credential (TPM 2.0 Part 1 §24, Part 3 §12.6 MakeCredential) that only the
// TPM holding that EK can recover, and only while the AK of that name is
// loaded in it. It denies identities that could never verify, so no work
// is spent on them.
func (v *Verifier) Challenge(id []byte) (send, keep []byte, err error) {
	ident, err := decodeIdentity(id)
	if err != nil {
		return nil, nil, attest.Deny(attest.ClassMalformed, err)
	}
	cert, err := x509.ParseCertificate(ident.ekCert)
	if err != nil {
		return nil, nil, attest.Denyf(attest.ClassMalformed, "ek-cert: %w", err)
	}
	if err := v.checkEK(cert); err != nil {
		return nil, nil, attest.Deny(attest.ClassChain, err)
	}
	key, err := v.Cache.ak(ident.akPublic)
	if err != nil {
		return nil, nil, err
	}
	return makeCredential(v.rand(), cert, key.name, id)
}

// makeCredential encrypts a fresh secret to the certificate's EK for the
// AK called akName.
func makeCredential(r io.Reader, cert *x509.Certificate, akName, id []byte) (send, keep []byte, err error) {
	tmpl, err := ekTemplateFor(cert.PublicKey)
	if err != nil {
		return nil, nil, attest.Deny(attest.ClassChain, err)
	}
	ek, err := tpm2.ImportEncapsulationKey(tmpl)
	if err != nil {
		return nil, nil, attest.Denyf(attest.ClassChain, "ek-cert: %w", err)
	}
	secret := make([]byte, secretSize)
	if _, err := io.ReadFull(r, secret); err != nil {
		return nil, nil, attest.Denyf(attest.ClassInternal, "credential secret: %w", err)
	}
	cred, seed, err := tpm2.CreateCredential(r, ek, akName, secret)
	if err != nil {
		return nil, nil, attest.Denyf(attest.ClassInternal, "make credential: %w", err)
	}
	digest := sha256.Sum256(id)
	return challenge{cred, seed}.encode(), kept{digest[:], secret}.encode(), nil
}

// parsed is the evidence after the malformed-evidence stage.
type parsed struct {
	blobs    map[string][]byte
	identity identity
	kept     kept
	ekCert   *x509.Certificate
	// ak, or akErr: a malformed AK denies at parsing, an unacceptable one
	// (attributes, curve) in the chain-of-trust stage.
	ak       *ak
	akErr    error
	quote    *attestation
	sig      *signature
	replayed map[int][]byte
}

// Verify checks ev in the order of ARCHITECTURE §4 and denies on the first
// failure: shape, chain of trust (EK certificate, the challenged identity,
// AK attributes, credential activation, quote signature), policy (hash bank,
// PCR coverage), binding (qualifying data), measurements (PCR digest, event
// log replay, reference values).
func (v *Verifier) Verify(ctx context.Context, ev *attest.Evidence, in attest.Input) (*attest.Verified, error) {
	ref, err := checkInput(v, in)
	if err != nil {
		return nil, err
	}
	p, err := v.parseEvidence(ev, in)
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, attest.Deny(attest.ClassInternal, err)
	}

	// Chain of trust.
	if err := v.checkEK(p.ekCert); err != nil {
		return nil, attest.Deny(attest.ClassChain, err)
	}
	if !bytes.Equal(p.blobs[BlobEKCert], p.identity.ekCert) || !bytes.Equal(p.blobs[BlobAKPublic], p.identity.akPublic) {
		return nil, attest.Denyf(attest.ClassChain, "evidence: EK certificate or AK differs from the identity announced")
	}
	// The digest binds the EK the credential was encrypted to and the AK
	// whose name it was made for (a name is a hash of the public area).
	if d := sha256.Sum256(in.Identity); !bytes.Equal(d[:], p.kept.identityDigest) {
		return nil, attest.Denyf(attest.ClassChain, "identity: not the one challenged")
	}
	if p.akErr != nil {
		return nil, p.akErr
	}
	key := p.ak
	// Part 1 §24: only the TPM holding the EK, with this AK loaded, could
	// recover the secret; without it the AK could live anywhere.
	if subtle.ConstantTimeCompare(p.blobs[BlobActivation], p.kept.secret) != 1 {
		return nil, attest.Denyf(attest.ClassChain, "activation: credential not recovered, the AK is not proven to be in the EK's TPM")
	}
	if err := p.sig.verify(key.pub, p.blobs[BlobQuote]); err != nil {
		return nil, attest.Deny(attest.ClassChain, err)
	}
	// A restricted key signs data starting with TPM_GENERATED_VALUE only if
	// the TPM made it (Part 1 §25.3): without the magic, the signature
	// vouches for nothing the TPM measured.
	if p.quote.magic != tpmGeneratedValue {
		return nil, attest.Denyf(attest.ClassChain, "quote: magic %#x, want TPM_GENERATED_VALUE", p.quote.magic)
	}
	// Another attestation the AK signed (certify, time …) is not a quote.
	if p.quote.typ != tpmSTAttestQuote {
		return nil, attest.Denyf(attest.ClassChain, "quote: type %#x, want TPM_ST_ATTEST_QUOTE", p.quote.typ)
	}
	info, err := parseQuoteInfo(p.quote.attested)
	if err != nil {
		return nil, attest.Deny(attest.ClassMalformed, err)
	}

	// Policy: the SHA-256 bank, covering every reference PCR. A SHA-1 bank
	// could be forged by collision (hash-bank downgrade).
	if len(info.banks) != 1 || info.banks[0].hash != algSHA256 {
		return nil, attest.Denyf(attest.ClassPolicy, "quote: PCR banks %v, want only SHA-256 (hash-bank downgrade)", bankNames(info.banks))
	}
	quoted := info.banks[0].pcrs
	for i := range ref.TPM.PCRs {
		if !slices.Contains(quoted, i) {
			return nil, attest.Denyf(attest.ClassPolicy, "quote: PCR %d of the reference is not quoted", i)
		}
	}

	// Binding.
	if want := in.Binding.SHA256(); subtle.ConstantTimeCompare(p.quote.extraData, want[:]) != 1 {
		return nil, attest.Denyf(attest.ClassBinding, "quote: qualifying data %x, want the binding's %x", p.quote.extraData, want)
	}

	// Measurements.
	values := p.blobs[BlobPCRs]
	if len(values) != sha256.Size*len(quoted) {
		return nil, attest.Denyf(attest.ClassMalformed, "pcrs: %d bytes, want %d for %d quoted PCRs", len(values), sha256.Size*len(quoted), len(quoted))
	}
	if d := sha256.Sum256(values); !bytes.Equal(d[:], info.pcrDigest) {
		return nil, attest.Denyf(attest.ClassMeasurement, "pcrs: values do not hash to the quote's PCR digest")
	}
	pcr := make(map[int][]byte, len(quoted))
	for n, i := range quoted {
		pcr[i] = values[n*sha256.Size : (n+1)*sha256.Size]
		if !bytes.Equal(pcr[i], p.replayed[i]) {
			return nil, attest.Denyf(attest.ClassMeasurement, "eventlog: replays PCR %d to %x, the TPM quoted %x", i, p.replayed[i], pcr[i])
		}
	}
	out := &attest.Verified{Platform: attest.PlatformTPM, Profile: ref.Profile,
		TCB: fmt.Sprintf("firmware %#016x", p.quote.firmwareVersion), Measurements: map[string]string{}}
	for _, i := range slices.Sorted(maps.Keys(ref.TPM.PCRs)) {
		if !bytes.Equal(pcr[i], ref.TPM.PCRs[i]) {
			return nil, attest.Denyf(attest.ClassMeasurement, "PCR %d is %x, reference %q wants %x", i, pcr[i], ref.Profile, []byte(ref.TPM.PCRs[i]))
		}
		out.Measurements[fmt.Sprintf("PCR%d", i)] = hex.EncodeToString(pcr[i])
	}
	spki, err := x509.MarshalPKIXPublicKey(p.ekCert.PublicKey)
	if err != nil {
		return nil, attest.Denyf(attest.ClassInternal, "ek-cert: %w", err)
	}
	hw := sha256.Sum256(spki)
	out.HardwareID = hex.EncodeToString(hw[:])
	return out, nil
}

func checkInput(v *Verifier, in attest.Input) (*attest.Reference, error) {
	if v.Roots == nil {
		return nil, attest.Denyf(attest.ClassInternal, "verifier: no pinned EK roots")
	}
	ref := in.Reference
	if ref == nil {
		return nil, attest.Denyf(attest.ClassInternal, "input: no reference")
	}
	if err := ref.Validate(); err != nil {
		return nil, attest.Deny(attest.ClassInternal, err)
	}
	if ref.Platform != attest.PlatformTPM {
		return nil, attest.Denyf(attest.ClassInternal, "reference %q is for %q", ref.Profile, ref.Platform)
	}
	if err := in.Binding.Validate(); err != nil {
		return nil, attest.Deny(attest.ClassInternal, err)
	}
	return ref, nil
}

// parseEvidence is the malformed-evidence stage: every blob present, none
// unknown, each parsed. The kept value is the verifier's own; a bad one is
// an internal failure.
func (v *Verifier) parseEvidence(ev *attest.Evidence, in attest.Input) (*parsed, error) {
	if err := ev.Check(attest.PlatformTPM); err != nil {
		return nil, err
	}
	p := &parsed{blobs: map[string][]byte{}}
	for _, name := range blobNames {
		b, err := ev.Blob(name)
		if err != nil {
			return nil, err
		}
		p.blobs[name] = b
	}
	for name := range ev.Blobs {
		if !slices.Contains(blobNames, name) {
			return nil, attest.Denyf(attest.ClassMalformed, "evidence: unknown blob %q", name)
		}
	}
	var err error
	if p.kept, err = decodeKept(in.Kept); err != nil {
		return nil, attest.Deny(attest.ClassInternal, err)
	}
	if p.identity, err = decodeIdentity(in.Identity); err != nil {
		return nil, attest.Deny(attest.ClassMalformed, err)
	}
	if p.ekCert, err = x509.ParseCertificate(p.blobs[BlobEKCert]); err != nil {
		return nil, attest.Denyf(attest.ClassMalformed, "ek-cert: %w", err)
	}
	if p.ak, p.akErr = v.Cache.ak(p.blobs[BlobAKPublic]); attest.ClassOf(p.akErr) == attest.ClassMalformed {
		return nil, p.akErr
	}
	if p.quote, err = parseAttestation(p.blobs[BlobQuote]); err != nil {
		return nil, attest.Deny(attest.ClassMalformed, err)
	}
	if p.sig, err = parseSignature(p.blobs[BlobSignature]); err != nil {
		return nil, attest.Deny(attest.ClassMalformed, err)
	}
	if p.replayed, err = Replay(p.blobs[BlobEventLog]); err != nil {
		return nil, attest.Deny(attest.ClassMalformed, err)
	}
	return p, nil
}

func bankNames(banks []bankSelection) []string {
	var s []string
	for _, b := range banks {
		switch b.hash {
		case algSHA1:
			s = append(s, "SHA-1")
		case algSHA256:
			s = append(s, "SHA-256")
		default:
			s = append(s, fmt.Sprintf("%#04x", b.hash))
		}
	}
	return s
}
