"""Names of Docker Official Images, used only to suggest alternatives in denials.

A denied ``someuser/nginx`` can point at the official ``nginx``, but suggesting an
official image that does not exist would send people on a hunt, so suggestions are
limited to names known to be Docker Official Images. This list never grants access:
the policy decides whether the suggestion is itself allowed.
"""

from __future__ import annotations

__all__ = ["OFFICIAL_IMAGES"]

OFFICIAL_IMAGES = frozenset(
    """
    adminer aerospike almalinux alpine alt amazoncorretto amazonlinux api-firewall
    arangodb archlinux backdrop bash bonita buildpack-deps busybox caddy cassandra
    centos chronograf cirros clearlinux clickhouse clojure composer convertigo
    couchbase couchdb crate dart debian docker drupal eclipse-mosquitto eclipse-
    temurin eggdrop elasticsearch elixir emqx erlang fedora flink fluentd friendica
    gazebo gcc geonetwork ghost golang gradle groovy haproxy haskell haxe hello-
    world hitch httpd hylang ibm-semeru-runtimes ibmjava influxdb irssi jetty joomla
    jruby julia kapacitor kibana kong krakend lightstreamer liquibase logstash
    mageia mariadb matomo maven mediawiki memcached mongo mongo-express monica mono
    mysql nats neo4j neurodebian nextcloud nginx node odoo open-liberty openjdk
    oraclelinux orientdb percona perl photon php php-zendserver phpmyadmin plone
    postfixadmin postgres pypy python r-base rabbitmq rakudo-star redis redmine
    registry rethinkdb rocket.chat rockylinux ruby rust sapmachine satosa silverpeas
    solr sonarqube spark spiped storm swift swipl teamspeak telegraf tomcat tomee
    traefik ubuntu unit varnish websphere-liberty wordpress xwiki yourls znc
    zookeeper
    """.split()  # noqa: SIM905 - a word list reads best as words
)
