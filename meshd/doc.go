// Package meshd keeps a node's WireGuard interface equal to keyd's peer set of
// attested nodes: it follows keyd's peer directory and applies each change as a diff.
//
// It is not an attester and makes no trust decision of its own: which nodes are
// in the mesh is keyd's verdict; meshd only never adds a peer keyd did not list.
package meshd
