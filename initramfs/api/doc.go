// Package api holds the initramfs's wire types: the init configuration the
// image builder writes, and the untrusted hints file the init hands attestd.
//
// It has no behaviour beyond parsing and validation; the sequence is in boot.
package api
