#!/usr/bin/env bash
# Generates the certificates the tests use, into DIR (created). All keys are ECDSA P-256.
#   ca.pem/ca.key           test CA
#   server.pem/server.key   leaf for "localhost" (SAN DNS:localhost, IP:127.0.0.1), chain = leaf
#   wrongname.pem/.key      leaf for "wrong.example" signed by the CA
#   wildcard.pem/.key       leaf for "*.example.test" signed by the CA
#   expired.pem/.key        leaf for "localhost" signed by the CA, expired a year ago
#   selfsigned.pem/.key     self-signed leaf for "localhost"
#   client.pem/client.key   client certificate "test-client" signed by the CA
#   other-ca.pem/.key       a second CA nobody trusts; otherca-server.pem/.key signed by it
# Usage: gen-test-certs.sh DIR
set -euo pipefail
dir=${1:?usage: gen-test-certs.sh DIR}
mkdir -p "$dir"
cd "$dir"
[ -f .complete ] && exit 0

key() { openssl ecparam -name prime256v1 -genkey -noout -out "$1" 2>/dev/null; }

ca() { # name subject
	key "$1.key"
	openssl req -x509 -new -key "$1.key" -subj "/CN=$2" -days 3650 -sha256 \
		-addext "basicConstraints=critical,CA:TRUE" \
		-addext "keyUsage=critical,keyCertSign,cRLSign" -out "$1.pem" 2>/dev/null
}

leaf() { # name cn san ca [extra x509 args...]
	local name=$1 cn=$2 san=$3 signer=$4
	shift 4
	key "$name.key"
	openssl req -new -key "$name.key" -subj "/CN=$cn" -out "$name.csr" 2>/dev/null
	# a CRL distribution point, as a public CA's certificates carry (testssl.sh checks it)
	printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\ncrlDistributionPoints=URI:http://ca.starttls-proxy.test/ca.crl\n%s\n' \
		"${san:+subjectAltName=$san}" > "$name.ext"
	openssl x509 -req -in "$name.csr" -CA "$signer.pem" -CAkey "$signer.key" \
		-CAcreateserial -sha256 -extfile "$name.ext" -out "$name.pem" "$@" 2>/dev/null
	rm -f "$name.csr" "$name.ext"
}

ca ca "starttls-proxy test CA"
ca other-ca "untrusted test CA"
leaf server localhost "DNS:localhost,IP:127.0.0.1" ca -days 825
leaf wrongname wrong.example "DNS:wrong.example" ca -days 825
leaf wildcard "*.example.test" "DNS:*.example.test" ca -days 825
leaf client test-client "" ca -days 825
leaf otherca-server localhost "DNS:localhost,IP:127.0.0.1" other-ca -days 825
# Expired: valid from two years ago to one year ago (openssl 3 x509 -not_before/-not_after
# are not in Debian 12's 3.0, so use the ca command with explicit dates).
key expired.key
openssl req -new -key expired.key -subj "/CN=localhost" -out expired.csr 2>/dev/null
mkdir -p exp-ca && : > exp-ca/index.txt && echo 01 > exp-ca/serial
cat > exp-ca/ca.cnf <<CNF
[ca]
default_ca = d
[d]
database = exp-ca/index.txt
serial = exp-ca/serial
new_certs_dir = exp-ca
default_md = sha256
policy = p
copy_extensions = none
x509_extensions = e
[p]
commonName = supplied
[e]
basicConstraints = CA:FALSE
subjectAltName = DNS:localhost,IP:127.0.0.1
CNF
start=$(date -u -d '2 years ago' +%Y%m%d%H%M%SZ)
end=$(date -u -d '1 year ago' +%Y%m%d%H%M%SZ)
openssl ca -batch -config exp-ca/ca.cnf -cert ca.pem -keyfile ca.key -in expired.csr \
	-startdate "$start" -enddate "$end" -out expired.pem -notext 2>/dev/null
rm -rf exp-ca expired.csr
# Self-signed leaf.
key selfsigned.key
openssl req -x509 -new -key selfsigned.key -subj "/CN=localhost" -days 825 -sha256 \
	-addext "subjectAltName=DNS:localhost,IP:127.0.0.1" -out selfsigned.pem 2>/dev/null
chmod 644 ./*.pem ./*.key
touch .complete
