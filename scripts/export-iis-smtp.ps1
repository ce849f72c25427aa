<#
.SYNOPSIS
    Export the IIS 6 SMTP virtual servers of this Windows server for
    `relaywarden import iis`.

.DESCRIPTION
    Reads the metabase through WMI (namespace root\MicrosoftIISv2, installed with the
    "IIS 6 WMI Compatibility" / Web-WMI feature), the way that works on Windows Server
    2012-2022 where MetaBase.xml is not meant to be read directly:

      IIsSmtpServerSetting   one per virtual server (SmtpSvc/N): bindings, limits, relay list,
                             smart host, retry, badmail, logging ...
      IIsSmtpDomainSetting   the remote and local domains (SmtpSvc/N/Domain/NAME)
      IIsIPSecuritySetting   connection control (GrantByDefault, IPGrant, IPDeny,
                             DomainGrant, DomainDeny)

    Writes one JSON file. Passwords (RoutePassword, LogOdbcPassword) are NOT exported:
    relaywarden never imports them; its import report says where to put them.

.EXAMPLE
    powershell -ExecutionPolicy Bypass -File export-iis-smtp.ps1 -Path C:\temp\iis-smtp.json
    # then, on the relaywarden machine:
    relaywarden import iis iis-smtp.json -o relay.toml
#>
param(
    [string]$Path = "iis-smtp.json"
)

$ErrorActionPreference = "Stop"
$ns = "root\MicrosoftIISv2"
$secret = @("RoutePassword", "LogOdbcPassword", "AdminACL", "AdminACLBin")

function Convert-WmiObject($obj) {
    # Every property WMI returns, as plain values; secrets and WMI's own fields left out.
    $out = [ordered]@{}
    foreach ($p in $obj.Properties) {
        if ($secret -contains $p.Name) { continue }
        $v = $p.Value
        if ($p.Name -eq "ServerBindings" -and $v -ne $null) {
            # ServerBinding objects -> "IP:port:hostheader", as MetaBase.xml writes them.
            $v = @($v | ForEach-Object { "{0}:{1}:{2}" -f $_.IP, $_.Port, $_.Hostname })
        } elseif ($v -is [byte[]]) {
            $v = @($v | ForEach-Object { [int]$_ })
        }
        $out[$p.Name] = $v
    }
    return $out
}

try {
    $servers = @(Get-WmiObject -Namespace $ns -Class IIsSmtpServerSetting)
} catch {
    Write-Error ("cannot read $ns IIsSmtpServerSetting: $_ " +
                 "(install the IIS 6 WMI Compatibility feature: Install-WindowsFeature Web-WMI)")
    exit 1
}
$domains = @(Get-WmiObject -Namespace $ns -Class IIsSmtpDomainSetting -ErrorAction SilentlyContinue)
$ipsec = @(Get-WmiObject -Namespace $ns -Class IIsIPSecuritySetting -ErrorAction SilentlyContinue |
           Where-Object { $_.Name -match '^SmtpSvc/\d+$' })

$export = [ordered]@{
    exportedBy = "export-iis-smtp.ps1"
    computer   = $env:COMPUTERNAME
    date       = (Get-Date).ToString("o")
    servers    = @($servers | ForEach-Object { Convert-WmiObject $_ })
    domains    = @($domains | ForEach-Object { Convert-WmiObject $_ })
    ipSecurity = @($ipsec | ForEach-Object {
        [ordered]@{
            Name           = $_.Name
            GrantByDefault = [bool]$_.GrantByDefault
            IPGrant        = @($_.IPGrant)
            IPDeny         = @($_.IPDeny)
            DomainGrant    = @($_.DomainGrant)
            DomainDeny     = @($_.DomainDeny)
        }
    })
}

$export | ConvertTo-Json -Depth 6 | Set-Content -Path $Path -Encoding UTF8
Write-Host ("wrote {0}: {1} virtual server(s), {2} domain(s)" -f $Path, $servers.Count, $domains.Count)
