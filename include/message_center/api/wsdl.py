"""WSDL 1.1 documents for the SOAP services we implement, in the shape of ACC's
``/nl/jsp/schemawsdl.jsp?schema=...`` (document/literal, ``soapAction="nms:rtEvent#PushEvent"``).

``domEvent`` / ``domEventCollection`` / ``elemParameters`` are ACC's DOM parameters: any XML
(``xs:any``), so a generated client passes the ``<rtEvent ...>`` element as it is. The
``plId`` answers are unqualified elements, exactly as ACC writes them
(``<urn:PushEventResponse><plId xsi:type="xsd:long">...``).
"""

from __future__ import annotations

from xml.sax.saxutils import quoteattr

SCHEMAS = ("nms:rtEvent", "nms:batchEvent", "xtk:session")

_PUSH_TYPES = """
      <s:element name="PushEvent">
        <s:complexType><s:sequence>
          <s:element name="sessiontoken" type="s:string" minOccurs="1" maxOccurs="1"/>
          <s:element name="domEvent" type="tns:Element" minOccurs="1" maxOccurs="1"/>
        </s:sequence></s:complexType>
      </s:element>
      <s:element name="PushEventResponse">
        <s:complexType><s:sequence>
          <s:element name="plId" type="s:long" form="unqualified" minOccurs="1" maxOccurs="1"/>
        </s:sequence></s:complexType>
      </s:element>
      <s:element name="PushEvents">
        <s:complexType><s:sequence>
          <s:element name="sessiontoken" type="s:string" minOccurs="1" maxOccurs="1"/>
          <s:element name="domEventCollection" type="tns:Element" minOccurs="1" maxOccurs="1"/>
        </s:sequence></s:complexType>
      </s:element>
      <s:element name="PushEventsResponse">
        <s:complexType><s:sequence>
          <s:element name="plId" type="s:long" form="unqualified" minOccurs="1"
                     maxOccurs="unbounded"/>
        </s:sequence></s:complexType>
      </s:element>"""

_SESSION_TYPES = """
      <s:element name="Logon">
        <s:complexType><s:sequence>
          <s:element name="sessiontoken" type="s:string" minOccurs="0" maxOccurs="1"/>
          <s:element name="strLogin" type="s:string" minOccurs="1" maxOccurs="1"/>
          <s:element name="strPassword" type="s:string" minOccurs="1" maxOccurs="1"/>
          <s:element name="elemParameters" type="tns:Element" minOccurs="0" maxOccurs="1"/>
        </s:sequence></s:complexType>
      </s:element>
      <s:element name="LogonResponse">
        <s:complexType><s:sequence>
          <s:element name="pstrSessionToken" type="s:string" minOccurs="1" maxOccurs="1"/>
          <s:element name="pSessionInfo" type="tns:Element" minOccurs="1" maxOccurs="1"/>
          <s:element name="pstrSecurityToken" type="s:string" minOccurs="1" maxOccurs="1"/>
        </s:sequence></s:complexType>
      </s:element>
      <s:element name="Logoff">
        <s:complexType><s:sequence>
          <s:element name="sessiontoken" type="s:string" minOccurs="1" maxOccurs="1"/>
        </s:sequence></s:complexType>
      </s:element>
      <s:element name="LogoffResponse">
        <s:complexType><s:sequence/></s:complexType>
      </s:element>"""

_OPERATIONS = {
    "nms:rtEvent": ("PushEvent", "PushEvents"),
    "nms:batchEvent": ("PushEvent", "PushEvents"),
    "xtk:session": ("Logon", "Logoff"),
}


def namespace_of(schema: str) -> str:
    return f"urn:{schema}"


def wsdl(schema: str, location: str) -> str:
    """The WSDL of ``schema`` (one of ``SCHEMAS``) with its port at ``location``."""
    if schema not in _OPERATIONS:
        raise KeyError(schema)
    name = schema.partition(":")[2]
    namespace = namespace_of(schema)
    port = f"{name}MethodsSoap"
    types = _SESSION_TYPES if schema == "xtk:session" else _PUSH_TYPES
    messages, operations, bindings = [], [], []
    for operation in _OPERATIONS[schema]:
        messages.append(
            f'  <wsdl:message name="{operation}In">\n'
            f'    <wsdl:part name="parameters" element="tns:{operation}"/>\n'
            f'  </wsdl:message>\n'
            f'  <wsdl:message name="{operation}Out">\n'
            f'    <wsdl:part name="parameters" element="tns:{operation}Response"/>\n'
            f'  </wsdl:message>')
        operations.append(
            f'    <wsdl:operation name="{operation}">\n'
            f'      <wsdl:input message="tns:{operation}In"/>\n'
            f'      <wsdl:output message="tns:{operation}Out"/>\n'
            f'    </wsdl:operation>')
        bindings.append(
            f'    <wsdl:operation name="{operation}">\n'
            f'      <soap:operation soapAction="{schema}#{operation}" style="document"/>\n'
            f'      <wsdl:input><soap:body use="literal"/></wsdl:input>\n'
            f'      <wsdl:output><soap:body use="literal"/></wsdl:output>\n'
            f'    </wsdl:operation>')
    nl = "\n"
    return f"""<?xml version="1.0" encoding="utf-8"?>
<wsdl:definitions xmlns:wsdl="http://schemas.xmlsoap.org/wsdl/"
    xmlns:soap="http://schemas.xmlsoap.org/wsdl/soap/"
    xmlns:s="http://www.w3.org/2001/XMLSchema"
    xmlns:tns="{namespace}" targetNamespace="{namespace}">
  <wsdl:documentation>{schema} of Message Center on Apache Airflow (the methods of
    Adobe Campaign Classic's {schema} that it implements).</wsdl:documentation>
  <wsdl:types>
    <s:schema elementFormDefault="qualified" targetNamespace="{namespace}">
      <s:complexType name="Element">
        <s:sequence>
          <s:any processContents="skip" minOccurs="0" maxOccurs="unbounded"/>
        </s:sequence>
        <s:anyAttribute processContents="skip"/>
      </s:complexType>{types}
    </s:schema>
  </wsdl:types>
{nl.join(messages)}
  <wsdl:portType name="{port}">
{nl.join(operations)}
  </wsdl:portType>
  <wsdl:binding name="{port}" type="tns:{port}">
    <soap:binding style="document" transport="http://schemas.xmlsoap.org/soap/http"/>
{nl.join(bindings)}
  </wsdl:binding>
  <wsdl:service name="{name}">
    <wsdl:port name="{port}" binding="tns:{port}">
      <soap:address location={quoteattr(location)}/>
    </wsdl:port>
  </wsdl:service>
</wsdl:definitions>
"""
