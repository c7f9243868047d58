package disk

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// LUKS2 on-disk format (LUKS2 On-Disk Format Specification, §2.1 "Binary
// header"): two copies of a 4096-byte binary header, each followed by its
// JSON area; the primary at offset 0, the secondary at the primary's
// hdr_size. The checksum (§2.2) covers the whole copy (binary header with
// the checksum field zeroed, then the JSON area).
const (
	luksBinarySize = 4096
	luksLabelOff   = 24
	luksLabelLen   = 48
	luksAlgOff     = 72
	luksUUIDOff    = 168
	luksUUIDLen    = 40
	luksHdrOffOff  = 256
	luksCsumOff    = 448
	luksCsumLen    = 64
)

var (
	luksMagic1 = []byte("LUKS\xba\xbe")
	luksMagic2 = []byte("SKUL\xba\xbe")
)

// luksHdrSizes are the header sizes the spec allows (§2.1: 16 KiB to
// 4 MiB, powers of two); a secondary copy is looked for at each of them when
// the primary cannot say where it is.
var luksHdrSizes = []int64{16 << 10, 32 << 10, 64 << 10, 128 << 10, 256 << 10, 512 << 10, 1 << 20, 2 << 20, 4 << 20}

// luksCopy is one header copy as found on disk.
type luksCopy struct {
	Offset int64
	// Found: the copy's magic is there; Valid: its checksum verified and
	// its JSON parsed. Why says why a found copy is not valid.
	Found, Valid bool
	Why          string
	SeqID        uint64
	Label        string
	UUID         string
	Meta         luksMeta
	size         int64
}

// luksMeta is the part of the JSON area (§3) the in-use policy checks.
type luksMeta struct {
	Segments map[string]luksSegment `json:"segments"`
	Keyslots map[string]struct {
		Type    string `json:"type"`
		KeySize int    `json:"key_size"`
	} `json:"keyslots"`
	Config struct {
		Requirements struct {
			Mandatory []string `json:"mandatory"`
		} `json:"requirements"`
	} `json:"config"`
}

type luksSegment struct {
	Type       string `json:"type"`
	Encryption string `json:"encryption"`
	Integrity  *struct {
		Type string `json:"type"`
	} `json:"integrity"`
}

// luksHeader is what readLUKS found: both copies.
type luksHeader struct {
	Primary, Secondary luksCopy
}

// any reports whether either copy's magic is there.
func (h *luksHeader) any() bool { return h.Primary.Found || h.Secondary.Found }

// readLUKS reads both header copies of the volume at r. It never fails on
// content: what it found is described in the result; only I/O errors are
// returned. It reads before any cryptsetup call on purpose: cryptsetup
// repairs a damaged copy from the other one as a side effect of most
// commands (even isLuks, as measured with 2.6.1), which would erase the
// evidence of an offline edit.
func readLUKS(r io.ReaderAt) (*luksHeader, error) {
	h := &luksHeader{}
	var err error
	if h.Primary, err = readLUKSCopy(r, 0, luksMagic1); err != nil {
		return nil, err
	}
	offsets := luksHdrSizes
	if h.Primary.Valid {
		offsets = []int64{h.Primary.hdrSize()}
	}
	for _, off := range offsets {
		c, err := readLUKSCopy(r, off, luksMagic2)
		if err != nil {
			return nil, err
		}
		if c.Found {
			h.Secondary = c
			break
		}
	}
	return h, nil
}

// hdrSize is the size a valid copy declared (its secondary's offset).
func (c *luksCopy) hdrSize() int64 { return c.size }

func readLUKSCopy(r io.ReaderAt, off int64, magic []byte) (luksCopy, error) {
	c := luksCopy{Offset: off}
	bin := make([]byte, luksBinarySize)
	if _, err := r.ReadAt(bin, off); err != nil {
		if errors.Is(err, io.EOF) {
			return c, nil // a volume too small for this copy has none
		}
		return c, fmt.Errorf("read LUKS2 header at %d: %w", off, err)
	}
	if !bytes.Equal(bin[:6], magic) {
		return c, nil
	}
	c.Found = true
	if v := binary.BigEndian.Uint16(bin[6:8]); v != 2 {
		c.Why = fmt.Sprintf("version %d, want 2", v)
		return c, nil
	}
	size := int64(binary.BigEndian.Uint64(bin[8:16]))
	okSize := false
	for _, s := range luksHdrSizes {
		okSize = okSize || s == size
	}
	if !okSize {
		c.Why = fmt.Sprintf("hdr_size %d is not one the spec allows", size)
		return c, nil
	}
	if got := int64(binary.BigEndian.Uint64(bin[luksHdrOffOff:])); got != off {
		c.Why = fmt.Sprintf("hdr_offset %d, found at %d", got, off)
		return c, nil
	}
	if alg := cstr(bin[luksAlgOff : luksAlgOff+32]); alg != "sha256" {
		// cryptsetup writes sha256; another algorithm is not ours.
		c.Why = fmt.Sprintf("checksum_alg %q, want sha256", alg)
		return c, nil
	}
	whole := make([]byte, size)
	if _, err := r.ReadAt(whole, off); err != nil {
		if errors.Is(err, io.EOF) {
			c.Why = "truncated"
			return c, nil
		}
		return c, fmt.Errorf("read LUKS2 header at %d: %w", off, err)
	}
	want := bytes.Clone(whole[luksCsumOff : luksCsumOff+sha256.Size])
	clear(whole[luksCsumOff : luksCsumOff+luksCsumLen])
	if got := sha256.Sum256(whole); !bytes.Equal(got[:], want) {
		c.Why = "checksum mismatch"
		return c, nil
	}
	c.SeqID = binary.BigEndian.Uint64(bin[16:24])
	c.Label = cstr(bin[luksLabelOff : luksLabelOff+luksLabelLen])
	c.UUID = cstr(bin[luksUUIDOff : luksUUIDOff+luksUUIDLen])
	js := whole[luksBinarySize:]
	if i := bytes.IndexByte(js, 0); i >= 0 {
		js = js[:i]
	}
	if err := json.Unmarshal(js, &c.Meta); err != nil {
		c.Why = fmt.Sprintf("JSON area: %v", err)
		return c, nil
	}
	c.Valid = true
	c.size = size
	return c, nil
}

func cstr(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}

// checkInUse is the policy for a volume labelled in use: both copies valid
// and agreeing on the UUID, which must be the partition's, and exactly the
// segment Palisade formats (aes-xts-plain64, integrity as configured), with
// no pending requirement such as a reencryption. LUKS2 does not
// authenticate the segment parameters (the keyslot digest covers only the
// volume key), so a header edited to cipher_null over a plaintext file
// system would otherwise open and receive the node's writes in clear.
func checkInUse(h *luksHeader, partUUID string, integrity bool) error {
	for _, c := range []*luksCopy{&h.Primary, &h.Secondary} {
		name := "primary"
		if c == &h.Secondary {
			name = "secondary"
		}
		switch {
		case !c.Found:
			return fmt.Errorf("%w: %s LUKS2 header copy missing", ErrHeaderAltered, name)
		case !c.Valid:
			return fmt.Errorf("%w: %s LUKS2 header copy at %d: %s", ErrHeaderAltered, name, c.Offset, c.Why)
		case c.UUID != partUUID:
			return fmt.Errorf("%w: %s LUKS2 header uuid %q, partition GUID %s", ErrHeaderAltered, name, c.UUID, partUUID)
		}
		if len(c.Meta.Segments) != 1 {
			return fmt.Errorf("%w: %s LUKS2 header has %d segments, want 1", ErrHeaderAltered, name, len(c.Meta.Segments))
		}
		for id, s := range c.Meta.Segments {
			if s.Type != "crypt" || s.Encryption != Cipher {
				return fmt.Errorf("%w: %s LUKS2 segment %s is %s/%s, want crypt/%s", ErrHeaderAltered, name, id, s.Type, s.Encryption, Cipher)
			}
			got := ""
			if s.Integrity != nil {
				got = s.Integrity.Type
			}
			if want := integrityType(integrity); got != want {
				return fmt.Errorf("%w: %s LUKS2 segment %s integrity %q, want %q", ErrHeaderAltered, name, id, got, want)
			}
		}
		if m := c.Meta.Config.Requirements.Mandatory; len(m) > 0 {
			return fmt.Errorf("%w: %s LUKS2 header has mandatory requirements %q", ErrHeaderAltered, name, m)
		}
	}
	return nil
}

// integrityType is the LUKS2 JSON name of the integrity cryptsetup sets for
// --integrity hmac-sha256.
func integrityType(on bool) string {
	if on {
		return "hmac(sha256)"
	}
	return ""
}
