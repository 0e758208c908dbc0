// Command kube-apiserver is the Kubernetes API server of the pinned release with an etcd 3.6
// embedded in the same process, for Warden's tests: no kubelet, no container runtime, but
// the real API machinery (validation, admission, RBAC, webhooks, TokenReview).
//
// Flags before `--` are this program's; everything after is passed to kube-apiserver, with
// `--etcd-servers` added. The embedded etcd listens on 127.0.0.1 on a free port and keeps its
// data in --etcd-data-dir; it stops with the process.
package main

import (
	"flag"
	"fmt"
	"net/url"
	"os"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
)

func main() {
	own := flag.NewFlagSet("kube-apiserver (warden testenv)", flag.ExitOnError)
	dataDir := own.String("etcd-data-dir", "", "directory for the embedded etcd's data (required)")
	own.Usage = func() {
		fmt.Fprintf(os.Stderr, "usage: %s --etcd-data-dir DIR -- [kube-apiserver flags]\n", os.Args[0])
		own.PrintDefaults()
	}
	args := os.Args[1:]
	split := len(args)
	for i, a := range args {
		if a == "--" {
			split = i
			break
		}
	}
	if err := own.Parse(args[:split]); err != nil || *dataDir == "" {
		own.Usage()
		os.Exit(2)
	}
	var apiserverArgs []string
	if split < len(args) {
		apiserverArgs = args[split+1:]
	}

	etcd, endpoint, err := startEtcd(*dataDir)
	if err != nil {
		fmt.Fprintf(os.Stderr, "embedded etcd: %v\n", err)
		os.Exit(1)
	}
	defer etcd.Close()

	command := app.NewAPIServerCommand()
	command.SetArgs(append(apiserverArgs, "--etcd-servers="+endpoint))
	os.Exit(cli.Run(command))
}

// startEtcd starts an embedded etcd on a free loopback port and returns its client URL.
func startEtcd(dataDir string) (*embed.Etcd, string, error) {
	cfg := embed.NewConfig()
	cfg.Dir = dataDir
	cfg.Logger = "zap"
	cfg.LogLevel = "error"
	loopback := func() []url.URL { return []url.URL{{Scheme: "http", Host: "127.0.0.1:0"}} }
	cfg.ListenClientUrls = loopback()
	cfg.AdvertiseClientUrls = loopback()
	cfg.ListenPeerUrls = loopback()
	cfg.AdvertisePeerUrls = loopback()
	cfg.InitialCluster = cfg.Name + "=http://127.0.0.1:0"
	etcd, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, "", err
	}
	select {
	case <-etcd.Server.ReadyNotify():
	case <-time.After(60 * time.Second):
		etcd.Close()
		return nil, "", fmt.Errorf("not ready within 60s")
	case err := <-etcd.Err():
		etcd.Close()
		return nil, "", err
	}
	return etcd, "http://" + etcd.Clients[0].Addr().String(), nil
}
