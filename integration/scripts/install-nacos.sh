#!/usr/bin/env bash
# Assembles a standalone Nacos server from Maven Central into a cache outside the
# repository. Prints the install directory on stdout.
#
# Alibaba does not publish the Nacos server modules on Maven Central; the
# unchanged modules are republished there under groupId io.github.pig-mesh.nacos.
# That republish lacks the nacos-bootstrap module (the class that starts the
# Spring contexts in order), so we resolve nacos-server + nacos-console with
# Maven's dependency plugin and compile a small launcher of our own:
#   lameduck.nacos.Launch                 core context, then server web context
#                                         (and the console when asked for)
#   lameduck.nacos.LoopbackRaftRpcFactory JRaft's stock gRPC factory listens on
#                                         every interface; this one binds the
#                                         raft port to 127.0.0.1
# Layout: $dir/lib/*.jar, $dir/classpath.txt (jar order to use), $dir/classes,
# $dir/src, $dir/.complete
# Cold install: about a minute (about 190 MB of jars); cache hit: instant.
set -euo pipefail

NACOS_VERSION="${NACOS_VERSION:-3.1.0-bugfix}"
NACOS_GROUP_ID="${NACOS_GROUP_ID:-io.github.pig-mesh.nacos}"
DEPENDENCY_PLUGIN="org.apache.maven.plugins:maven-dependency-plugin:3.6.1"
# Bump when the launcher or the assembly changes, so caches are rebuilt.
LAYOUT=2
CACHE_DIR="${LAMEDUCK_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/lameduck}"
DIR="$CACHE_DIR/nacos-$NACOS_VERSION"
STAMP="layout=$LAYOUT group=$NACOS_GROUP_ID version=$NACOS_VERSION"

die() { echo "install-nacos: $*" >&2; exit 1; }

if [ -f "$DIR/.complete" ] && [ "$(cat "$DIR/.complete")" = "$STAMP" ] &&
  [ -f "$DIR/classes/lameduck/nacos/Launch.class" ] && [ -f "$DIR/classpath.txt" ] &&
  [ -f "$DIR/lib/nacos-server-$NACOS_VERSION.jar" ]; then
  echo "$DIR"
  exit 0
fi

for tool in mvn javac java; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool not found on PATH (need JDK 17+ and Maven)"
done

echo "install-nacos: assembling Nacos $NACOS_GROUP_ID:$NACOS_VERSION into $DIR (about a minute)" >&2
mkdir -p "$CACHE_DIR"
work="$(mktemp -d "$CACHE_DIR/.nacos-build.XXXXXX")"
trap 'rm -rf "$work"' EXIT
out="$work/nacos-$NACOS_VERSION"
mkdir -p "$out/lib" "$out/classes/META-INF/services" "$out/src/lameduck/nacos"

cat >"$work/pom.xml" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.lameduck</groupId>
  <artifactId>nacos-standalone-assembly</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>$NACOS_GROUP_ID</groupId>
      <artifactId>nacos-server</artifactId>
      <version>$NACOS_VERSION</version>
    </dependency>
    <dependency>
      <groupId>$NACOS_GROUP_ID</groupId>
      <artifactId>nacos-console</artifactId>
      <version>$NACOS_VERSION</version>
    </dependency>
  </dependencies>
</project>
EOF

if ! (cd "$work" && mvn -B -q "$DEPENDENCY_PLUGIN:copy-dependencies" \
  -DincludeScope=runtime -DoutputDirectory="$out/lib" &&
  mvn -B -q -o "$DEPENDENCY_PLUGIN:build-classpath" \
    -DincludeScope=runtime -Dmdep.outputFile="$work/classpath.raw") >"$work/mvn.log" 2>&1; then
  tail -n 30 "$work/mvn.log" >&2
  die "maven could not resolve $NACOS_GROUP_ID:nacos-server:$NACOS_VERSION (see above)"
fi
[ -f "$out/lib/nacos-server-$NACOS_VERSION.jar" ] || die "nacos-server-$NACOS_VERSION.jar missing after dependency resolution"

# The classpath order matters: jraft brings com.alipay.sofa:hessian 3.x, which
# carries its own copy of com.caucho.hessian.io and would shadow the
# com.caucho:hessian 4.x that nacos-consistency needs (NoSuchMethodError at
# start-up); nacos-core still needs the sofa jar for com.alipay.hessian.clhm. So
# keep Maven's resolution order (as Nacos's own fat jar does) and check that
# hessian 4 precedes hessian 3. classpath.txt lists jar names, one per line.
tr ':' '\n' <"$work/classpath.raw" | sed 's#.*/##' | grep -v '^$' >"$out/classpath.txt"
[ "$(wc -l <"$out/classpath.txt")" -eq "$(ls "$out/lib" | wc -l)" ] ||
  die "build-classpath and copy-dependencies disagree on the jar list"
h4="$(grep -n '^hessian-4\.' "$out/classpath.txt" | head -n1 | cut -d: -f1)"
h3="$(grep -n '^hessian-3\.' "$out/classpath.txt" | head -n1 | cut -d: -f1)"
[ -n "$h4" ] || die "com.caucho hessian 4.x is missing from the classpath"
if [ -n "$h3" ] && [ "$h3" -lt "$h4" ]; then
  die "hessian 3.x precedes hessian 4.x on the classpath"
fi

cat >"$out/src/lameduck/nacos/Launch.java" <<'EOF'
package lameduck.nacos;

import com.alibaba.nacos.NacosServerBasicApplication;
import com.alibaba.nacos.NacosServerWebApplication;
import com.alibaba.nacos.console.NacosConsole;
import com.alibaba.nacos.core.listener.startup.NacosStartUp;
import com.alibaba.nacos.core.listener.startup.NacosStartUpManager;
import com.alibaba.nacos.sys.env.DeploymentType;
import com.alibaba.nacos.sys.env.EnvUtil;
import org.springframework.boot.WebApplicationType;
import org.springframework.boot.builder.SpringApplicationBuilder;
import org.springframework.context.ConfigurableApplicationContext;

/**
 * Starts Nacos: a core context without a web server, then, as its children, the
 * server API context (main port) and, for deployment type "merged" or "console",
 * the console context (console port). Each phase is announced to Nacos's start-up
 * manager first, as its run listeners require.
 */
public final class Launch {
    private Launch() {
    }

    public static void main(String[] args) {
        DeploymentType type = DeploymentType.getType(System.getProperty("nacos.deployment.type", "server"));
        if (type == DeploymentType.ILLEGAL || type == DeploymentType.SERVER_WITH_MCP) {
            throw new IllegalArgumentException("unsupported nacos.deployment.type: " + type.getTypeName());
        }
        EnvUtil.setDeploymentType(type);
        NacosStartUpManager.start(NacosStartUp.CORE_START_UP_PHASE);
        ConfigurableApplicationContext core = new SpringApplicationBuilder(NacosServerBasicApplication.class)
                .web(WebApplicationType.NONE).run(args);
        if (type != DeploymentType.CONSOLE) {
            NacosStartUpManager.start(NacosStartUp.WEB_START_UP_PHASE);
            new SpringApplicationBuilder(NacosServerWebApplication.class).parent(core).run(args);
        }
        if (type == DeploymentType.MERGED || type == DeploymentType.CONSOLE) {
            NacosStartUpManager.start(NacosStartUp.CONSOLE_START_UP_PHASE);
            new SpringApplicationBuilder(NacosConsole.class).parent(core).run(args);
        }
    }
}
EOF

cat >"$out/src/lameduck/nacos/LoopbackRaftRpcFactory.java" <<'EOF'
package lameduck.nacos;

import com.alipay.sofa.jraft.rpc.RaftRpcFactory;
import com.alipay.sofa.jraft.rpc.RpcServer;
import com.alipay.sofa.jraft.rpc.impl.GrpcRaftRpcFactory;
import com.alipay.sofa.jraft.rpc.impl.GrpcServer;
import com.alipay.sofa.jraft.util.Endpoint;
import com.alipay.sofa.jraft.util.SPI;
import com.google.protobuf.Message;
import io.grpc.Server;
import io.grpc.netty.shaded.io.grpc.netty.NettyServerBuilder;
import io.grpc.util.MutableHandlerRegistry;
import java.lang.reflect.Field;
import java.net.InetSocketAddress;
import java.util.Map;

/**
 * Nacos runs JRaft even standalone, and JRaft's gRPC factory listens on every
 * interface. This factory binds the raft server to the address in system property
 * lameduck.raft.bind (default 127.0.0.1). JRaft's service loader prefers it over
 * the stock factory because of its higher SPI priority.
 */
@SPI(priority = 100)
public class LoopbackRaftRpcFactory extends GrpcRaftRpcFactory {
    private static final int MAX_INBOUND =
            Integer.getInteger("jraft.grpc.max_inbound_message_size.bytes", 4 * 1024 * 1024);

    @Override
    public RpcServer createRpcServer(Endpoint endpoint, RaftRpcFactory.ConfigHelper<RpcServer> helper) {
        String host = System.getProperty("lameduck.raft.bind", "127.0.0.1");
        MutableHandlerRegistry registry = new MutableHandlerRegistry();
        Server server = NettyServerBuilder.forAddress(new InetSocketAddress(host, endpoint.getPort()))
                .fallbackHandlerRegistry(registry).directExecutor().maxInboundMessageSize(MAX_INBOUND).build();
        GrpcServer rpcServer = new GrpcServer(server, registry, parsers(), getMarshallerRegistry());
        if (helper != null) {
            helper.config(rpcServer);
        }
        return rpcServer;
    }

    @SuppressWarnings("unchecked")
    private Map<String, Message> parsers() {
        try {
            Field field = GrpcRaftRpcFactory.class.getDeclaredField("parserClasses");
            field.setAccessible(true);
            return (Map<String, Message>) field.get(this);
        } catch (ReflectiveOperationException e) {
            throw new IllegalStateException("cannot read GrpcRaftRpcFactory.parserClasses", e);
        }
    }
}
EOF

if ! javac -nowarn --release 17 -d "$out/classes" -cp "$(sed "s#^#$out/lib/#" "$out/classpath.txt" | paste -sd:)" "$out"/src/lameduck/nacos/*.java >"$work/javac.log" 2>&1; then
  cat "$work/javac.log" >&2
  die "compiling the Nacos launcher failed (see above)"
fi
echo lameduck.nacos.LoopbackRaftRpcFactory >"$out/classes/META-INF/services/com.alipay.sofa.jraft.rpc.RaftRpcFactory"
echo "$STAMP" >"$out/.complete"

rm -rf "$DIR"
mv "$out" "$DIR"
echo "install-nacos: installed Nacos $NACOS_VERSION into $DIR ($(du -sh "$DIR" | cut -f1))" >&2
echo "$DIR"
