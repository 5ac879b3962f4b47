package manager

import (
	"crypto/md5"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"strings"
	"time"
)

// sepmSerial formats a SEPM serial number: four hex digits, then the time as
// "01/30/2012 23:50:54 284" (month/day/year, milliseconds).
func sepmSerial(prefix uint16, t time.Time) string {
	t = t.UTC()
	return fmt.Sprintf("%04X-%s %03d", prefix, t.Format("01/02/2006 15:04:05"), t.Nanosecond()/int(time.Millisecond))
}

// md5Hex is the upper-case hex MD5 SEPM uses as a file checksum.
func md5Hex(b []byte) string {
	sum := md5.Sum(b)
	return strings.ToUpper(hex.EncodeToString(sum[:]))
}

// buildIndex is index2.xml, the document of each heartbeat (about 300 bytes).
func buildIndex(domainID, profileChecksum, profileSerial string, modified time.Time, sylinkSerial string) []byte {
	return fmt.Appendf(nil, `<?xml version="1.0" encoding="UTF-8"?>
<Index DomainId="%s">
 <Profile Checksum="%s" SerialNumber="%s" LastModifiedTime="%d"/>
 <SyLink Serial="%s"/>
</Index>
`, domainID, profileChecksum, profileSerial, modified.UnixMilli(), sylinkSerial)
}

// sylinkServer is one <Server> of the communication settings.
type sylinkServer struct {
	address   string
	httpPort  int // 0: no plain HTTP listener
	httpsPort int // 0: no HTTPS listener
	certDER   []byte
}

// buildSyLink is the unsigned SyLink.xml of docs/protocol.md, with the signing
// certificate under each server as <ServerCertificate>.
func buildSyLink(domainID, kcs string, heartbeat int, servers []sylinkServer) []byte {
	var b strings.Builder
	fmt.Fprintf(&b, `<?xml version="1.0" encoding="UTF-8"?>
<ServerSettings DomainId="%s" NameSpace="rpc">
 <CommConf>
  <AgentCommunicationSetting AlwaysConnect="1" CommunicationMode="PULL" DisableDownloadProfile="0" Kcs="%s" PullHeartbeatSeconds="%d" PushHeartbeatSeconds="%d" RandomizationEnabled="1" RandomizationRange="%d" UploadCmdStateHeartbeatSeconds="%d" UploadLearnedApp="0" UploadLogHeartbeatSeconds="%d" UploadOpStateHeartbeatSeconds="%d"/>
  <ServerList FreezeSmsList="0" Name="Default Management Server List">
   <ServerPriorityBlock Name="Priority1">
`, domainID, kcs, heartbeat, heartbeat, heartbeat, heartbeat, heartbeat, heartbeat)
	for _, s := range servers {
		fmt.Fprintf(&b, `    <Server Address="%s" HttpPort="%d" HttpsPort="%d" VerifySignatures="1" HttpsVerifyCA="0">
     <ServerCertificate>%s</ServerCertificate>
    </Server>
`, xmlAttr(s.address), s.httpPort, s.httpsPort, base64.StdEncoding.EncodeToString(s.certDER))
	}
	b.WriteString(`   </ServerPriorityBlock>
  </ServerList>
 </CommConf>
</ServerSettings>
`)
	return []byte(b.String())
}

// xmlAttr escapes a value for a double-quoted attribute.
func xmlAttr(s string) string {
	return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;", `"`, "&quot;").Replace(s)
}

// signatureOverhead estimates what an enveloped signature with the
// certificate in KeyInfo adds to a document, so a profile can be padded to
// the requested size before it is signed.
func signatureOverhead(certDER []byte) int {
	return 1100 + base64.StdEncoding.EncodedLen(len(certDER))
}

// buildProfile is an unsigned SEPM-style policy document, root <Profile>,
// about size bytes: fixed antivirus, LiveUpdate and tamper-protection
// settings, then firewall rules, IPS signatures, file exceptions and device
// rules added in turn until the size is reached.
func buildProfile(domainID, serial string, size int) []byte {
	var head, rules, ips, exceptions, devices strings.Builder
	fmt.Fprintf(&head, `<?xml version="1.0" encoding="UTF-8"?>
<Profile DomainId="%s" GroupName="My Company" Name="Default Group Policy" SerialNumber="%s" Version="14.3.558.0000" CreatedBy="admin">
 <AvPolicy Name="Antivirus and Antispyware Policy" Locked="0">
  <AutoProtect Enabled="1" ScanOnAccess="1" ScanOnModify="1" ScanRemovableMedia="1" NetworkCache="1"/>
  <ScheduledScan Name="Daily Scheduled Scan" Type="ActiveScan" Enabled="1">
   <Schedule Frequency="Daily" Time="12:30" RandomizeMinutes="60" RetryDays="3"/>
  </ScheduledScan>
  <Actions>
   <Action Risk="Virus" First="Clean" Second="Quarantine"/>
   <Action Risk="Security Risk" First="Quarantine" Second="Log"/>
   <Action Risk="Adware" First="Quarantine" Second="Log"/>
  </Actions>
 </AvPolicy>
 <LiveUpdatePolicy Name="LiveUpdate Settings policy">
  <Source Type="DefaultManagementServer" Priority="1"/>
  <Source Type="LiveUpdateServer" Url="https://liveupdate.symantecliveupdate.com" Priority="2"/>
  <Schedule Frequency="Continuously" RetryMinutes="240"/>
 </LiveUpdatePolicy>
 <TamperProtection Enabled="1" Action="Block" Notify="1"/>
`, domainID, serial)
	var total int
	lists := []*strings.Builder{&rules, &ips, &exceptions, &devices}
	fixed := head.Len()
	for _, w := range profileSections {
		fixed += len(w.open) + len(w.close)
	}
	for i := 0; fixed+total < size; i++ {
		b := lists[i%len(lists)]
		before := b.Len()
		profileSections[i%len(lists)].write(b, i/len(lists))
		total += b.Len() - before
	}
	var out strings.Builder
	out.Grow(fixed + total)
	out.WriteString(head.String())
	for i, w := range profileSections {
		out.WriteString(w.open)
		out.WriteString(lists[i].String())
		out.WriteString(w.close)
	}
	return []byte(out.String())
}

// profileSections are the repeated parts of a profile, in document order;
// the last one closes the root element.
var profileSections = []struct {
	open, close string
	write       func(*strings.Builder, int)
}{
	{" <FirewallPolicy Name=\"Firewall policy\">\n  <Rules>\n", "  </Rules>\n </FirewallPolicy>\n", writeRule},
	{" <IpsPolicy Name=\"Intrusion Prevention policy\">\n", " </IpsPolicy>\n", writeIPSSignature},
	{" <Exceptions>\n", " </Exceptions>\n", writeException},
	{" <DeviceControl>\n", " </DeviceControl>\n</Profile>\n", writeDeviceRule},
}

var (
	ruleServices = []struct {
		name, exe, proto string
		port             int
	}{
		{"DNS", "svchost.exe", "UDP", 53},
		{"Kerberos", "lsass.exe", "TCP", 88},
		{"SMB", "System", "TCP", 445},
		{"RDP", "svchost.exe", "TCP", 3389},
		{"LDAP", "lsass.exe", "TCP", 389},
		{"NTP", "svchost.exe", "UDP", 123},
		{"HTTPS", "msedge.exe", "TCP", 443},
	}
	ipsNames   = []string{"Attack: Apache Struts RCE", "Web Attack: Malicious Toolkit", "OS Attack: SMB Double Pulsar", "System Infected: Trojan.Backdoor Activity", "Audit: Remote Desktop Brute Force", "Attack: Log4j2 RCE"}
	directions = []string{"Outbound", "Inbound", "Both"}
)

func writeRule(b *strings.Builder, i int) {
	s := ruleServices[i%len(ruleServices)]
	fmt.Fprintf(b, `   <Rule Id="{%08X-4E1A-4C2B-9D3E-%012X}" Name="Allow %s %d" Enabled="1" Action="Allow" Direction="%s" Log="0">
    <Application Path="%%windir%%\system32\%s" Fingerprint="%016X"/>
    <Host Type="Subnet" Address="10.%d.%d.0" Mask="255.255.255.0"/>
    <Service Protocol="%s" RemotePort="%d"/>
    <Schedule Enabled="0"/>
   </Rule>
`, i, uint64(i)*2654435761, s.name, i, directions[i%len(directions)], s.exe, uint64(i)*0x9E3779B97F4A7C15, (i/256)%256, i%256, s.proto, s.port)
}

func writeIPSSignature(b *strings.Builder, i int) {
	fmt.Fprintf(b, "  <Signature Id=\"%d\" Name=\"%s %d\" Action=\"Block\" Log=\"1\" Severity=\"High\"/>\n",
		20000+i, ipsNames[i%len(ipsNames)], i)
}

func writeException(b *strings.Builder, i int) {
	fmt.Fprintf(b, "  <FileException Path=\"%%ProgramFiles%%\\Vendor%d\\bin\\agent%d.exe\" ScanType=\"AutoProtect\" IncludeSubfolders=\"0\"/>\n", i, i)
}

func writeDeviceRule(b *strings.Builder, i int) {
	fmt.Fprintf(b, "  <DeviceRule ClassId=\"{%08X-E325-11CE-BFC1-08002BE10318}\" Name=\"Device class %d\" Action=\"%s\"/>\n",
		0x4D36E965+i, i, []string{"Block", "Allow", "Log"}[i%3])
}
