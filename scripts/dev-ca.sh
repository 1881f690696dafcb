#!/usr/bin/env bash
# A local CA and certificates for the demo and the tests (never for production).
#
#   scripts/dev-ca.sh DIR [DOMAIN] [NAME...]
#
# Writes into DIR (created if missing; an existing ca.pem/ca-key.pem there is reused):
#   ca.pem, ca-key.pem         the CA (10 years); trust ca.pem in a client to test
#   wildcard.pem, wildcard-key.pem   *.DOMAIN and DOMAIN (default test.priv), signed by the CA:
#                              the default certificate (--tls-cert/--tls-key)
#   NAME.pem, NAME-key.pem     one certificate per extra NAME (custom domains), signed by the CA
# Keys are ECDSA P-256, mode 0600. Prints DIR's certificate paths.
set -euo pipefail
dir=${1:?usage: scripts/dev-ca.sh DIR [DOMAIN] [NAME...]}
domain=${2:-test.priv}
shift $(( $# >= 2 ? 2 : 1 ))
command -v openssl >/dev/null || { echo "dev-ca.sh: openssl is needed (apt-get install -y openssl)" >&2; exit 1; }
mkdir -p "$dir"
umask 077

if [ ! -f "$dir/ca.pem" ] || [ ! -f "$dir/ca-key.pem" ]; then
  openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 -keyout "$dir/ca-key.pem" \
    -out "$dir/ca.pem" -days 3650 -subj "/CN=tenant-gateway dev CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
fi

# issue NAME-OUT "DNS:a,DNS:b"
issue() {
  local out=$1 sans=$2 cn=$3
  openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 -keyout "$dir/$out-key.pem" \
    -out "$dir/$out.csr" -subj "/CN=$cn" 2>/dev/null
  printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n' "$sans" > "$dir/$out.ext"
  openssl x509 -req -in "$dir/$out.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca-key.pem" -CAcreateserial \
    -out "$dir/$out.pem" -days 825 -sha256 -extfile "$dir/$out.ext" 2>/dev/null
  rm -f "$dir/$out.csr" "$dir/$out.ext"
  echo "$dir/$out.pem"
}

issue wildcard "DNS:*.$domain,DNS:$domain" "*.$domain"
for name in "$@"; do
  issue "$name" "DNS:$name" "$name"
done
echo "$dir/ca.pem"
