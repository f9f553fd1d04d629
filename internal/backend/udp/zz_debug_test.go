package udp

import (
	"os"
	"testing"
	"time"
)

func TestZZDebug(t *testing.T) {
	if os.Getenv("WUD_DEBUG") == "" {
		t.Skip()
	}
	tp := newTopo(t, 2, `{"Type":"udp"}`)
	for _, h := range tp.hosts {
		tp.start(h)
	}
	os.WriteFile("/tmp/wud-debug", []byte(tp.hosts[0].name+" "+tp.hosts[1].name+" "+tp.hosts[0].pod+" "+tp.hosts[1].pod+"\n"), 0o644)
	for {
		if _, err := os.Stat("/tmp/wud-debug"); err != nil {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("h1 %+v", tp.hosts[0].b.Stats())
	t.Logf("h2 %+v", tp.hosts[1].b.Stats())
}
