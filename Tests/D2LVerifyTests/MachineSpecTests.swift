import D2LDiskModel
import Foundation
import Testing
@testable import D2LVerify

@Suite struct MachineSpecTests {
    @Test func domainXMLIsTransientAndEndsOnEveryStop() {
        let spec = MachineSpec(name: "d2l-verify-test", diskPath: "/d/a&b.img", diskFormat: .qcow2, diskBus: .sata)
        let xml = spec.domainXML
        for needle in [
            "<domain type='qemu'>", "<transient shareBacking='yes'/>", "<bios useserial='yes'/>",
            "<on_reboot>destroy</on_reboot>", "<on_poweroff>destroy</on_poweroff>", "<on_crash>destroy</on_crash>",
            "type='qcow2'", "bus='sata'", "/d/a&amp;b.img", "<serial type='pty'>",
        ] {
            #expect(xml.contains(needle), "\(needle)")
        }
        #expect(!xml.contains("<graphics"))
        #expect(!xml.contains("<interface"))
        // A daemon's transient overlay keeps the daemon's own security driver (it labels what it made).
        #expect(!xml.contains("<seclabel"))
        #expect(MachineSpec.uniqueName() != MachineSpec.uniqueName())
    }

    @Test func aDescriptorBackedDiskWritesOnlyToItsOverlayAndNamesNoImagePathForQEMU() {
        var spec = MachineSpec(name: "d2l-verify-test", diskPath: "/home/u/a&b.img", diskFormat: .vmdk)
        spec.diskAttachment = .descriptorBacked(overlay: "/var/tmp/d2l-verify-test/disk.qcow2", fdGroup: "image")
        let xml = spec.domainXML
        for needle in [
            "<driver name='qemu' type='qcow2'/>", "<source file='/var/tmp/d2l-verify-test/disk.qcow2'/>",
            "<backingStore type='file'>", "<format type='vmdk'/>", "<source file='/home/u/a&amp;b.img' fdgroup='image'/>",
            "<backingStore/>", "<seclabel type='none'/>",
        ] {
            #expect(xml.contains(needle), "\(needle)")
        }
        #expect(!xml.contains("<transient"))
    }

    @Test func aNICOnlyWhenAskedAndOnTheUserModeNetwork() {
        var spec = MachineSpec(name: "d2l-verify-test", diskPath: "/d/disk.img")
        #expect(!spec.domainXML.contains("<interface"))
        spec.network = .user
        let xml = spec.domainXML
        #expect(xml.contains("<interface type='user'><model type='virtio'/><rom enabled='no'/></interface>"))
        // The disk stays the boot device: no boot order on the NIC.
        #expect(xml.contains("<boot dev='hd'/>"))
    }
}

@Suite struct DomainNameTests {
    @Test("the d2l process that named a domain is read back from its name; other names have none")
    func ownerPID() {
        #expect(MachineSpec.ownerPID(ofDomainNamed: MachineSpec.uniqueName()) == getpid())
        #expect(MachineSpec.ownerPID(ofDomainNamed: MachineSpec.uniqueName(prefix: "d2l-verify-bisect")) == getpid())
        #expect(MachineSpec.ownerPID(ofDomainNamed: "d2l-verify-probe-42-ab") == 42)
        #expect(MachineSpec.ownerPID(ofDomainNamed: "debian-12") == nil)
        #expect(MachineSpec.ownerPID(ofDomainNamed: "d2l-verify-x-y") == nil)
    }
}

@Suite struct RootSessionTests {
    @Test("qemu:///session as root would run QEMU as root: refused; as a user, or any other URI, allowed")
    func aRootSessionIsRefused() {
        #expect(LibvirtHypervisor.rootSessionProblem(uri: "qemu:///session", euid: 0)?.contains("as root") == true)
        #expect(LibvirtHypervisor.rootSessionProblem(uri: "qemu+unix:///session", euid: 0) != nil)
        #expect(LibvirtHypervisor.rootSessionProblem(uri: "qemu:///session", euid: 1000) == nil)
        #expect(LibvirtHypervisor.rootSessionProblem(uri: "qemu:///system", euid: 0) == nil)
        #expect(LibvirtHypervisor.rootSessionProblem(uri: "qemu:///embed?root=/var/cache/d2l/libvirt", euid: 0) == nil)
        #expect(LibvirtHypervisor.rootSessionProblem(uri: "qemu+ssh://u@h/session", euid: 0) == nil)
    }
}
