import Foundation

/// Where d2l keeps state between runs: $D2L_CACHE, else $XDG_CACHE_HOME/d2l, else ~/.cache/d2l.
public enum CacheDirectory {
    public static var path: String {
        let env = ProcessInfo.processInfo.environment
        if let dir = env["D2L_CACHE"], !dir.isEmpty { return dir }
        if let xdg = env["XDG_CACHE_HOME"], !xdg.isEmpty { return xdg + "/d2l" }
        return NSHomeDirectory() + "/.cache/d2l"
    }
}
