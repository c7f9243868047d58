package tpm

import (
	"bytes"
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
	"github.com/google/go-tpm/tpm2/transport/linuxtpm"

	"github.com/palisade-cc/palisade/internal/attest"
)

// DefaultEventLogPath is where Linux exposes the firmware's event log.
const DefaultEventLogPath = "/sys/kernel/security/tpm0/binary_bios_measurements"

// DefaultPCRs are quoted: every PCR firmware and boot loaders measure into
// (PC Client PFP §3.3.4), so any reference subset of them is covered. PCR 10
// is left out: it is Linux IMA's, extended after ExitBootServices with its
// own log, so the firmware's event log can never replay it (the first QEMU
// boot of the image was denied on exactly that) and no reference pins it.
var DefaultPCRs = []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 14, 15}

// EK certificate NV indices, tried in this order (EK Credential Profile 2.0
// §2.2.1.4): ECC P-256, then RSA 2048.
const (
	nvECCEKCert = 0x01C0000A
	nvRSAEKCert = 0x01C00002
)

// Options configure an Attester; the zero value is production.
type Options struct {
	// EventLogPath is the event log to send; empty means
	// DefaultEventLogPath. A missing log is an error.
	EventLogPath string
	// PCRs are quoted, SHA-256 bank; nil means DefaultPCRs.
	PCRs []int
}

// Attester gathers TPM evidence. Its methods may be called from several
// goroutines; the TPM sees one command sequence at a time.
type Attester struct {
	tpm    transport.TPM
	closer io.Closer
	opts   Options

	// akTmpl and bank are fixed in production; tests of the verifier
	// change them to produce evidence an honest attester never would.
	akTmpl tpm2.TPMTPublic
	bank   tpm2.TPMAlgID

	mu     sync.Mutex
	ready  bool
	ek, ak tpm2.AuthHandle
	ekCert []byte
	akPub  []byte
}

var _ attest.Attester = (*Attester)(nil)

// NewAttester returns an attester speaking the TPM command protocol over rw
// (a device file, a socket wrapped by Open, the go-tpm-tools simulator).
func NewAttester(rw io.ReadWriter, opts Options) (*Attester, error) {
	return newAttester(transport.FromReadWriter(rw), nil, opts)
}

func newAttester(t transport.TPM, c io.Closer, opts Options) (*Attester, error) {
	if opts.EventLogPath == "" {
		opts.EventLogPath = DefaultEventLogPath
	}
	if opts.PCRs == nil {
		opts.PCRs = DefaultPCRs
	}
	for _, p := range opts.PCRs {
		if p < 0 || p >= numPCRs {
			return nil, fmt.Errorf("options.pcrs: PCR %d, want 0-%d", p, numPCRs-1)
		}
	}
	return &Attester{tpm: t, closer: c, opts: opts, akTmpl: akTemplate(), bank: tpm2.TPMAlgSHA256}, nil
}

// Open opens a TPM: a device ("/dev/tpmrm0", "/dev/tpm0"), or a swtpm
// server's data channel ("tcp:127.0.0.1:2321", "unix:/path/to/sock"), which
// carries raw TPM commands and responses. Close releases it.
func Open(path string, opts Options) (*Attester, error) {
	var t transport.TPMCloser
	switch {
	case strings.HasPrefix(path, "tcp:"), strings.HasPrefix(path, "unix:"):
		network, addr, _ := strings.Cut(path, ":")
		c, err := net.DialTimeout(network, addr, 10*time.Second)
		if err != nil {
			return nil, fmt.Errorf("open TPM %s: %w", path, err)
		}
		t = &streamTPM{conn: c}
	default:
		var err error
		if t, err = linuxtpm.Open(path); err != nil {
			return nil, fmt.Errorf("open TPM %s: %w", path, err)
		}
	}
	a, err := newAttester(t, t, opts)
	if err != nil {
		_ = t.Close()
		return nil, err
	}
	return a, nil
}

// Close flushes the keys the attester loaded and closes a TPM that Open
// opened.
func (a *Attester) Close() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.ready {
		_, _ = tpm2.FlushContext{FlushHandle: a.ak.Handle}.Execute(a.tpm)
		_, _ = tpm2.FlushContext{FlushHandle: a.ek.Handle}.Execute(a.tpm)
		a.ready = false
	}
	if a.closer != nil {
		return a.closer.Close()
	}
	return nil
}

// Platform is attest.PlatformTPM.
func (a *Attester) Platform() attest.Platform { return attest.PlatformTPM }

// Identity returns the EK certificate and the AK public area (encoding in
// encoding.go).
func (a *Attester) Identity(ctx context.Context) ([]byte, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.init(ctx); err != nil {
		return nil, err
	}
	return identity{a.ekCert, a.akPub}.encode(), nil
}

// init reads the EK certificate, creates the EK it certifies and the AK.
func (a *Attester) init(ctx context.Context) error {
	if a.ready {
		return nil
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	var (
		cert *x509.Certificate
		der  []byte
		tmpl tpm2.TPMTPublic
		errs []error
	)
	for _, c := range []struct {
		index tpm2.TPMHandle
		tmpl  tpm2.TPMTPublic
	}{{nvECCEKCert, tpm2.ECCEKTemplate}, {nvRSAEKCert, tpm2.RSAEKTemplate}} {
		b, err := a.readNV(c.index)
		if err == nil {
			if b, err = trimDER(b); err == nil {
				cert, err = x509.ParseCertificate(b)
			}
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("EK certificate at NV %#x: %w", c.index, err))
			continue
		}
		der, tmpl = b, c.tmpl
		break
	}
	if cert == nil {
		return errors.Join(errs...)
	}
	ek, err := tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHEndorsement, InPublic: tpm2.New2B(tmpl)}.Execute(a.tpm)
	if err != nil {
		return fmt.Errorf("create EK: %w", err)
	}
	ekPub, err := ek.OutPublic.Contents()
	if err == nil {
		err = samePublicKey(*ekPub, cert)
	}
	if err != nil {
		_, _ = tpm2.FlushContext{FlushHandle: ek.ObjectHandle}.Execute(a.tpm)
		return fmt.Errorf("EK: %w", err)
	}
	ak, err := tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHEndorsement, InPublic: tpm2.New2B(a.akTmpl)}.Execute(a.tpm)
	if err != nil {
		_, _ = tpm2.FlushContext{FlushHandle: ek.ObjectHandle}.Execute(a.tpm)
		return fmt.Errorf("create AK: %w", err)
	}
	a.ek = tpm2.AuthHandle{Handle: ek.ObjectHandle, Name: ek.Name}
	a.ak = tpm2.AuthHandle{Handle: ak.ObjectHandle, Name: ak.Name, Auth: tpm2.PasswordAuth(nil)}
	a.ekCert, a.akPub = der, ak.OutPublic.Bytes()
	a.ready = true
	return nil
}

// ekPolicy satisfies the default EK's authPolicy, PolicySecret(TPM_RH_ENDORSEMENT)
// (EK Credential Profile §B.6): the EK can be used only with the endorsement
// hierarchy's authorization, empty on the platforms Palisade runs on.
func ekPolicy(t transport.TPM, session tpm2.TPMISHPolicy, nonceTPM tpm2.TPM2BNonce) error {
	_, err := tpm2.PolicySecret{AuthHandle: tpm2.TPMRHEndorsement, PolicySession: session, NonceTPM: nonceTPM}.Execute(t)
	return err
}

// samePublicKey checks that the EK the template produced is the key the
// certificate certifies: otherwise the certificate speaks of another TPM.
func samePublicKey(pub tpm2.TPMTPublic, cert *x509.Certificate) error {
	key, err := tpm2.Pub(pub)
	if err != nil {
		return err
	}
	eq, ok := key.(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !eq.Equal(cert.PublicKey) {
		return errors.New("the EK created from the default template is not the key of the EK certificate")
	}
	return nil
}

// nvChunk is what one TPM2_NV_Read returns at most; every PC Client TPM
// accepts 512 (PTP §3.6, MAX_NV_BUFFER_SIZE ≥ 512).
const nvChunk = 512

func (a *Attester) readNV(index tpm2.TPMHandle) ([]byte, error) {
	rp, err := tpm2.NVReadPublic{NVIndex: index}.Execute(a.tpm)
	if err != nil {
		return nil, err
	}
	pub, err := rp.NVPublic.Contents()
	if err != nil {
		return nil, err
	}
	auth := tpm2.AuthHandle{Handle: index, Name: rp.NVName, Auth: tpm2.PasswordAuth(nil)}
	if !pub.Attributes.AuthRead {
		auth = tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)}
	}
	var out []byte
	for off := 0; off < int(pub.DataSize); off += nvChunk {
		n := min(nvChunk, int(pub.DataSize)-off)
		r, err := tpm2.NVRead{AuthHandle: auth, NVIndex: tpm2.NamedHandle{Handle: index, Name: rp.NVName},
			Size: uint16(n), Offset: uint16(off)}.Execute(a.tpm)
		if err != nil {
			return nil, fmt.Errorf("read at %d: %w", off, err)
		}
		out = append(out, r.Data.Buffer...)
	}
	return out, nil
}

// Attest answers the challenge by activating the credential, quotes the PCRs
// with qualifying data b.SHA256(), and adds the PCR values and event log.
func (a *Attester) Attest(ctx context.Context, chal []byte, b attest.Binding) (*attest.Evidence, error) {
	if err := b.Validate(); err != nil {
		return nil, err
	}
	c, err := decodeChallenge(chal)
	if err != nil {
		return nil, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.init(ctx); err != nil {
		return nil, err
	}
	// TPM 2.0 Part 1 §24: the TPM releases the credential only if the AK
	// named in it is loaded next to the EK it was encrypted to.
	act, err := tpm2.ActivateCredential{
		ActivateHandle: a.ak,
		// A fresh one-off policy session per use: the EK's policy is
		// consumed by the command it authorizes.
		KeyHandle:      tpm2.AuthHandle{Handle: a.ek.Handle, Name: a.ek.Name, Auth: tpm2.Policy(tpm2.TPMAlgSHA256, 16, ekPolicy)},
		CredentialBlob: tpm2.TPM2BIDObject{Buffer: c.credential},
		Secret:         tpm2.TPM2BEncryptedSecret{Buffer: c.secret},
	}.Execute(a.tpm)
	if err != nil {
		return nil, fmt.Errorf("activate credential: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	qd := b.SHA256()
	var quote *tpm2.QuoteResponse
	var values []byte
	// PCRs can change between the quote and the read; retry until the values
	// read are those quoted.
	for try := 0; ; try++ {
		quote, err = tpm2.Quote{
			SignHandle:     a.ak,
			QualifyingData: tpm2.TPM2BData{Buffer: qd[:]},
			InScheme:       tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgNull},
			PCRSelect:      pcrSelection(a.bank, a.opts.PCRs),
		}.Execute(a.tpm)
		if err != nil {
			return nil, fmt.Errorf("quote: %w", err)
		}
		if values, err = a.readPCRs(a.opts.PCRs); err != nil {
			return nil, err
		}
		if a.bank != tpm2.TPMAlgSHA256 || quotedDigestMatches(quote, values) {
			break
		}
		if try == 2 {
			return nil, errors.New("quote: PCRs kept changing while being quoted")
		}
	}
	log, err := os.ReadFile(a.opts.EventLogPath)
	if err != nil {
		return nil, fmt.Errorf("event log: %w", err)
	}
	return &attest.Evidence{Platform: attest.PlatformTPM, Blobs: map[string][]byte{
		BlobEKCert:     a.ekCert,
		BlobAKPublic:   a.akPub,
		BlobActivation: act.CertInfo.Buffer,
		BlobQuote:      quote.Quoted.Bytes(),
		BlobSignature:  tpm2.Marshal(quote.Signature),
		BlobPCRs:       values,
		BlobEventLog:   log,
	}}, nil
}

func quotedDigestMatches(q *tpm2.QuoteResponse, values []byte) bool {
	att, err := q.Quoted.Contents()
	if err != nil {
		return false
	}
	info, err := att.Attested.Quote()
	if err != nil {
		return false
	}
	d := sha256.Sum256(values)
	return bytes.Equal(info.PCRDigest.Buffer, d[:])
}

// pcrSelection selects pcrs of one bank; PC Client TPMs have 24 PCRs, three
// bytes of select bitmap (Part 2 §10.6.2).
func pcrSelection(bank tpm2.TPMAlgID, pcrs []int) tpm2.TPMLPCRSelection {
	sel := make([]byte, 3)
	for _, p := range pcrs {
		sel[p/8] |= 1 << (p % 8)
	}
	return tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{Hash: bank, PCRSelect: sel}}}
}

// readPCRs reads pcrs of the quoted bank, in ascending order, concatenated;
// TPM2_PCR_Read returns at most 8 values at a time (Part 3 §22.4).
func (a *Attester) readPCRs(pcrs []int) ([]byte, error) {
	want := slices.Sorted(slices.Values(pcrs))
	want = slices.Compact(want)
	got := map[int][]byte{}
	for len(got) < len(want) {
		var rest []int
		for _, p := range want {
			if got[p] == nil {
				rest = append(rest, p)
			}
		}
		r, err := tpm2.PCRRead{PCRSelectionIn: pcrSelection(a.bank, rest)}.Execute(a.tpm)
		if err != nil {
			return nil, fmt.Errorf("read PCRs: %w", err)
		}
		if len(r.PCRSelectionOut.PCRSelections) != 1 || len(r.PCRValues.Digests) == 0 {
			return nil, errors.New("read PCRs: TPM returned no values")
		}
		sel := r.PCRSelectionOut.PCRSelections[0].PCRSelect
		i := 0
		for p := 0; p < len(sel)*8 && i < len(r.PCRValues.Digests); p++ {
			if sel[p/8]&(1<<(p%8)) != 0 {
				got[p] = r.PCRValues.Digests[i].Buffer
				i++
			}
		}
	}
	var out []byte
	for _, p := range want {
		out = append(out, got[p]...)
	}
	return out, nil
}

// streamTPM carries raw TPM commands over a stream socket (swtpm's data
// channel). A response may arrive in pieces, so it is read by its header's
// size field (Part 1 §18.3: tag u16, size u32, code u32).
type streamTPM struct {
	conn net.Conn
	mu   sync.Mutex
}

// maxResponse bounds a TPM response (Part 2 MAX_RESPONSE_SIZE is 4096 on PC
// Client TPMs; swtpm allows more).
const maxResponse = 64 << 10

func (s *streamTPM) Send(cmd []byte) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	// Key creation can take a minute on slow TPMs.
	_ = s.conn.SetDeadline(time.Now().Add(2 * time.Minute))
	if _, err := s.conn.Write(cmd); err != nil {
		return nil, err
	}
	hdr := make([]byte, 10)
	if _, err := io.ReadFull(s.conn, hdr); err != nil {
		return nil, fmt.Errorf("TPM response header: %w", err)
	}
	size := binary.BigEndian.Uint32(hdr[2:6])
	if size < 10 || size > maxResponse {
		return nil, fmt.Errorf("TPM response size %d, want 10-%d", size, maxResponse)
	}
	rsp := make([]byte, size)
	copy(rsp, hdr)
	if _, err := io.ReadFull(s.conn, rsp[10:]); err != nil {
		return nil, fmt.Errorf("TPM response body: %w", err)
	}
	return rsp, nil
}

func (s *streamTPM) Close() error { return s.conn.Close() }
