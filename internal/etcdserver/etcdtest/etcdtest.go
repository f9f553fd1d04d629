// Package etcdtest starts a real embedded etcd for tests, listening only on
// a unix socket in the test's temporary directory.
package etcdtest

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/etcdserver"
)

// Start runs an etcd for the duration of the test and returns its client
// endpoint ("unix:///…/etcd.sock").
func Start(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	endpoint := "unix://" + filepath.Join(dir, "etcd.sock")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	srv, err := etcdserver.Start(ctx, etcdserver.Config{DataDir: filepath.Join(dir, "data"), ClientURLs: []string{endpoint}})
	if err != nil {
		t.Fatalf("start embedded etcd: %v", err)
	}
	t.Cleanup(srv.Close)
	return endpoint
}
