package tftp

import (
	"encoding/json"
	"fmt"
	"net"
	"time"
)

// Config is the TFTP server's part of the provisioner's configuration file.
// Zero values take the defaults noted on each field.
type Config struct {
	// Listen is host:port of the request socket. Default "127.0.0.1:69";
	// an unspecified host serves every address and answers from the address
	// each request was sent to.
	Listen string `json:"listen,omitempty"`
	// Root is the directory served read-only. Required.
	Root string `json:"root"`
	// MaxBlockSize caps the negotiated blksize (RFC 2348). Default 1468,
	// the largest block that fits a 1500-byte Ethernet frame. 512…65464.
	MaxBlockSize int `json:"max_block_size,omitempty"`
	// MaxWindowSize caps the negotiated windowsize (RFC 7440). Default 64. 1…65535.
	MaxWindowSize int `json:"max_window_size,omitempty"`
	// Timeout is the retransmission timeout unless the client negotiates
	// one (RFC 2349). Default 1s; 10ms…255s.
	Timeout Duration `json:"timeout,omitempty"`
	// Retries is how many timeouts in a row end a transfer. Default 5; 1…100.
	Retries int `json:"retries,omitempty"`
	// MaxPerClient caps concurrent transfers per client IP. Default 8.
	MaxPerClient int `json:"max_per_client,omitempty"`
	// MaxTransfers caps concurrent transfers overall. Default 1024.
	MaxTransfers int `json:"max_transfers,omitempty"`
	// SocketBuffer is the send and receive buffer of each socket, in bytes.
	// Default 4 MiB (forced past net.core.*mem_max when running as root).
	SocketBuffer int `json:"socket_buffer,omitempty"`
}

// Duration is a time.Duration written as a Go duration string ("1s") in JSON.
type Duration time.Duration

// MarshalJSON implements json.Marshaler.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// UnmarshalJSON implements json.Unmarshaler.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration must be a string like \"1s\": %w", err)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// Validate reports the first invalid field by its JSON name.
func (c Config) Validate() error {
	if c.Root == "" {
		return fmt.Errorf("tftp.root: required")
	}
	if c.Listen != "" {
		if _, _, err := net.SplitHostPort(c.Listen); err != nil {
			return fmt.Errorf("tftp.listen: %q is not host:port: %w", c.Listen, err)
		}
	}
	if v := c.MaxBlockSize; v != 0 && (v < defaultBlockSize || v > maxBlockSize) {
		return fmt.Errorf("tftp.max_block_size: %d not in %d…%d", v, defaultBlockSize, maxBlockSize)
	}
	if v := c.MaxWindowSize; v != 0 && (v < 1 || v > maxWindowSize) {
		return fmt.Errorf("tftp.max_window_size: %d not in 1…%d", v, maxWindowSize)
	}
	if v := time.Duration(c.Timeout); v != 0 && (v < 10*time.Millisecond || v > 255*time.Second) {
		return fmt.Errorf("tftp.timeout: %v not in 10ms…255s", v)
	}
	if v := c.Retries; v != 0 && (v < 1 || v > 100) {
		return fmt.Errorf("tftp.retries: %d not in 1…100", v)
	}
	if c.MaxPerClient < 0 {
		return fmt.Errorf("tftp.max_per_client: %d is negative", c.MaxPerClient)
	}
	if c.MaxTransfers < 0 {
		return fmt.Errorf("tftp.max_transfers: %d is negative", c.MaxTransfers)
	}
	if c.SocketBuffer < 0 || c.SocketBuffer > 1<<30 {
		return fmt.Errorf("tftp.socket_buffer: %d not in 0…1 GiB", c.SocketBuffer)
	}
	return nil
}

func (c Config) withDefaults() Config {
	if c.Listen == "" {
		c.Listen = "127.0.0.1:69"
	}
	if c.MaxBlockSize == 0 {
		c.MaxBlockSize = 1468
	}
	if c.MaxWindowSize == 0 {
		c.MaxWindowSize = 64
	}
	if c.Timeout == 0 {
		c.Timeout = Duration(time.Second)
	}
	if c.Retries == 0 {
		c.Retries = 5
	}
	if c.MaxPerClient == 0 {
		c.MaxPerClient = 8
	}
	if c.MaxTransfers == 0 {
		c.MaxTransfers = 1024
	}
	if c.SocketBuffer == 0 {
		c.SocketBuffer = 4 << 20
	}
	return c
}
