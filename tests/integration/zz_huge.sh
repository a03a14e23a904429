. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/smtp_lib.sh"
start_fake huge --huge-ehlo 100000
free_port P1
{ global_section; printf '[route huge]\nlisten = 127.0.0.1:%s\nprotocol = smtp\nclient_tls = none\nupstream = 127.0.0.1:%s\nupstream_tls = starttls\nupstream_policy = verify\nupstream_name = localhost\n' $P1 $(port_of huge); } > $T/c.conf
start_proxy $T/c.conf
for j in 1 2 3 4 5 6; do
(for i in $(seq 1 30); do
  out=$(smtp_dialog --connect 127.0.0.1:$P1 --timeout 8 "raw:EHLO legacy.client.test\r\n" expect:421 closed:3) || { echo "FAIL $j.$i: $out"; break; }
done) &
done
wait
cp $PROXY_LOG /tmp/scratch/huge.log
finish
