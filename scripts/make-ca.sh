#!/usr/bin/env bash
# Makes a throwaway CA and a leaf certificate for 127.0.0.1 signed by it in DIR: ca.pem (what
# HNC_UPSTREAM_CA_FILE is given), leaf.pem and leaf.key (what a TLS front serves), as a
# company's private CA would be. For the checks' local TLS fronts only.
# usage: scripts/make-ca.sh DIR
set -euo pipefail
dir=$1
key() { openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "$@" 2>/dev/null; }
key -x509 -keyout "$dir/ca.key" -out "$dir/ca.pem" -days 1 -subj /CN=local-check-ca
key -keyout "$dir/leaf.key" -out "$dir/leaf.csr" -subj /CN=127.0.0.1
printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' > "$dir/ext"
openssl x509 -req -in "$dir/leaf.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial \
  -out "$dir/leaf.pem" -days 1 -extfile "$dir/ext" 2>/dev/null
