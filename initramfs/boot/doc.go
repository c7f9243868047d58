// Package boot is the init sequence of Palisade's measured OS: mounts, kernel
// modules, DHCP, provisioner hints, then the configured stages in order.
//
// It is not attestd or meshd: it only starts the stages its configuration
// lists, and it never trusts the hints it passes on (ARCHITECTURE §1).
package boot
