//! Pyroscope's query API (grafana/pyroscope api/querier/v1/querier.proto and the parts of
//! api/types/v1/types.proto it uses), spoken over Connect unary: `POST
//! /querier.v1.QuerierService/<Method>` with `application/proto` or `application/json` bodies.
//!
//! Field numbers follow the upstream files exactly. The serde derives implement the proto3 JSON
//! mapping that Connect's JSON codec uses: lowerCamelCase names (the proto names are accepted too),
//! 64-bit integers written as strings and read from strings or numbers, enums read by name or
//! number. Fields left at their default are still written: every proto3 JSON parser accepts that.

use serde::{Deserialize, Serialize};

/// The Connect service path prefix: `/querier.v1.QuerierService/`.
pub const SERVICE_PATH: &str = "/querier.v1.QuerierService";

// ---------------------------------------------------------------------------------------------
// types.v1

#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct LabelPair {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `types.v1.ProfileType`; `ID` is `name:sample_type:sample_unit:period_type:period_unit`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Message, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ProfileType {
    #[prost(string, tag = "1")]
    #[serde(rename = "ID")]
    pub id: String,
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(string, tag = "4")]
    #[serde(alias = "sample_type")]
    pub sample_type: String,
    #[prost(string, tag = "5")]
    #[serde(alias = "sample_unit")]
    pub sample_unit: String,
    #[prost(string, tag = "6")]
    #[serde(alias = "period_type")]
    pub period_type: String,
    #[prost(string, tag = "7")]
    #[serde(alias = "period_unit")]
    pub period_unit: String,
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct Series {
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<LabelPair>,
    #[prost(message, repeated, tag = "2")]
    pub points: Vec<Point>,
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct Point {
    #[prost(double, tag = "1")]
    pub value: f64,
    /// Milliseconds since the Unix epoch.
    #[prost(int64, tag = "2")]
    #[serde(with = "int64")]
    pub timestamp: i64,
    /// Profiles that made the point (asked for with `exemplar_type`).
    #[prost(message, repeated, tag = "4")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub exemplars: Vec<Exemplar>,
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct LabelValuesRequest {
    #[prost(string, tag = "1")]
    pub name: String,
    /// Label selectors (`{k="v"}`); a label set matching any of them counts. Empty: all.
    #[prost(string, repeated, tag = "2")]
    pub matchers: Vec<String>,
    /// Milliseconds since the Unix epoch.
    #[prost(int64, tag = "3")]
    #[serde(with = "int64")]
    pub start: i64,
    #[prost(int64, tag = "4")]
    #[serde(with = "int64")]
    pub end: i64,
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct LabelValuesResponse {
    #[prost(string, repeated, tag = "1")]
    pub names: Vec<String>,
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct LabelNamesRequest {
    #[prost(string, repeated, tag = "1")]
    pub matchers: Vec<String>,
    #[prost(int64, tag = "2")]
    #[serde(with = "int64")]
    pub start: i64,
    #[prost(int64, tag = "3")]
    #[serde(with = "int64")]
    pub end: i64,
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct LabelNamesResponse {
    #[prost(string, repeated, tag = "1")]
    pub names: Vec<String>,
}

/// `types.v1.Labels`: one label set.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct Labels {
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<LabelPair>,
}

/// `types.v1.TimeSeriesAggregationType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum TimeSeriesAggregationType {
    Sum = 0,
    Average = 1,
}

// ---------------------------------------------------------------------------------------------
// querier.v1

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct ProfileTypesRequest {
    /// Milliseconds since the Unix epoch; 0 = the default range.
    #[prost(int64, tag = "1")]
    #[serde(with = "int64")]
    pub start: i64,
    #[prost(int64, tag = "2")]
    #[serde(with = "int64")]
    pub end: i64,
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ProfileTypesResponse {
    #[prost(message, repeated, tag = "1")]
    #[serde(alias = "profile_types")]
    pub profile_types: Vec<ProfileType>,
}

/// The label sets of the selected series (with Pyroscope's `__profile_type__` and friends).
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct SeriesRequest {
    /// Label selectors; a series matching any of them counts. Empty: all.
    #[prost(string, repeated, tag = "1")]
    pub matchers: Vec<String>,
    /// Only these labels of each set (distinct sets after projection); empty: all labels.
    #[prost(string, repeated, tag = "2")]
    #[serde(alias = "label_names")]
    pub label_names: Vec<String>,
    #[prost(int64, tag = "3")]
    #[serde(with = "int64")]
    pub start: i64,
    #[prost(int64, tag = "4")]
    #[serde(with = "int64")]
    pub end: i64,
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct SeriesResponse {
    #[prost(message, repeated, tag = "2")]
    #[serde(alias = "labels_set")]
    pub labels_set: Vec<Labels>,
}

/// `querier.v1.ProfileFormat`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum ProfileFormat {
    Unspecified = 0,
    Flamegraph = 1,
    Tree = 2,
    Dot = 3,
    Pprof = 4,
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct SelectMergeStacktracesRequest {
    /// `name:sample_type:sample_unit:period_type:period_unit`.
    #[prost(string, tag = "1")]
    #[serde(rename = "profileTypeID", alias = "profile_typeID")]
    pub profile_type_id: String,
    /// `{k="v", ...}`.
    #[prost(string, tag = "2")]
    #[serde(alias = "label_selector")]
    pub label_selector: String,
    /// Milliseconds since the Unix epoch.
    #[prost(int64, tag = "3")]
    #[serde(with = "int64")]
    pub start: i64,
    #[prost(int64, tag = "4")]
    #[serde(with = "int64")]
    pub end: i64,
    #[prost(int64, optional, tag = "5")]
    #[serde(alias = "max_nodes", with = "opt_int64")]
    pub max_nodes: Option<i64>,
    #[prost(enumeration = "ProfileFormat", tag = "6")]
    #[serde(with = "profile_format")]
    pub format: i32,
    /// Only stacks through this call site (`PROFILE_FORMAT_PPROF`).
    #[prost(message, optional, tag = "7")]
    #[serde(alias = "stack_trace_selector")]
    pub stack_trace_selector: Option<StackTraceSelector>,
    /// Only samples of these spans (newer clients send span profiles this way).
    /// Only the profiles with these IDs (an exemplar's `profile_id`).
    #[prost(string, repeated, tag = "8")]
    #[serde(alias = "profile_id_selector")]
    pub profile_id_selector: Vec<String>,
    #[prost(string, repeated, tag = "11")]
    #[serde(alias = "span_selector")]
    pub span_selector: Vec<String>,
}

/// `querier.v1.PprofProfile`: the merged profile of `PROFILE_FORMAT_PPROF`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PprofProfile {
    #[prost(message, optional, tag = "1")]
    pub profile: Option<crate::pprof::Profile>,
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct SelectMergeStacktracesResponse {
    #[prost(message, optional, tag = "1")]
    pub flamegraph: Option<FlameGraph>,
    /// The call graph in Graphviz DOT (`PROFILE_FORMAT_DOT`).
    #[prost(string, tag = "3")]
    pub dot: String,
    /// `PROFILE_FORMAT_PPROF`, binary codec only: in JSON it is left out and clients fall back to
    /// `SelectMergeProfile`, as they do with older Pyroscope servers.
    #[prost(message, optional, tag = "5")]
    #[serde(skip)]
    pub pprof: Option<PprofProfile>,
    /// Pyroscope's binary tree format (only for `PROFILE_FORMAT_TREE`, then `flamegraph` is
    /// absent): see `kiln_storage_server::query::flamebearer::encode_tree`.
    #[prost(bytes = "vec", tag = "2")]
    #[serde(with = "base64_bytes")]
    pub tree: Vec<u8>,
}

/// Same fields as [`SelectMergeStacktracesResponse`].
pub type SelectMergeSpanProfileResponse = SelectMergeStacktracesResponse;

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct DiffRequest {
    #[prost(message, optional, tag = "1")]
    pub left: Option<SelectMergeStacktracesRequest>,
    #[prost(message, optional, tag = "2")]
    pub right: Option<SelectMergeStacktracesRequest>,
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct DiffResponse {
    #[prost(message, optional, tag = "1")]
    pub flamegraph: Option<FlameGraphDiff>,
}

/// A flame graph, level by level. Each level holds 4 integers per node, left to right:
/// `[x offset delta, total, self, name index]`, the x offset being relative to the end of the
/// previous node of that level (a node's children start at its x + its self).
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct FlameGraph {
    #[prost(string, repeated, tag = "1")]
    pub names: Vec<String>,
    #[prost(message, repeated, tag = "2")]
    pub levels: Vec<Level>,
    #[prost(int64, tag = "3")]
    #[serde(with = "int64")]
    pub total: i64,
    #[prost(int64, tag = "4")]
    #[serde(alias = "max_self", with = "int64")]
    pub max_self: i64,
}

/// Like [`FlameGraph`] with 7 integers per node: `[left x delta, left total, left self, right x
/// delta, right total, right self, name index]`.
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct FlameGraphDiff {
    #[prost(string, repeated, tag = "1")]
    pub names: Vec<String>,
    #[prost(message, repeated, tag = "2")]
    pub levels: Vec<Level>,
    #[prost(int64, tag = "3")]
    #[serde(with = "int64")]
    pub total: i64,
    #[prost(int64, tag = "4")]
    #[serde(alias = "max_self", with = "int64")]
    pub max_self: i64,
    #[prost(int64, tag = "5")]
    #[serde(rename = "leftTicks", with = "int64")]
    pub left_ticks: i64,
    #[prost(int64, tag = "6")]
    #[serde(rename = "rightTicks", with = "int64")]
    pub right_ticks: i64,
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct Level {
    #[prost(int64, repeated, tag = "1")]
    #[serde(with = "vec_int64")]
    pub values: Vec<i64>,
}

/// Answered with a pprof `Profile` (google.v1.Profile, field-compatible with perftools').
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct SelectMergeProfileRequest {
    #[prost(string, tag = "1")]
    #[serde(rename = "profileTypeID", alias = "profile_typeID")]
    pub profile_type_id: String,
    #[prost(string, tag = "2")]
    #[serde(alias = "label_selector")]
    pub label_selector: String,
    #[prost(int64, tag = "3")]
    #[serde(with = "int64")]
    pub start: i64,
    #[prost(int64, tag = "4")]
    #[serde(with = "int64")]
    pub end: i64,
    #[prost(int64, optional, tag = "5")]
    #[serde(alias = "max_nodes", with = "opt_int64")]
    pub max_nodes: Option<i64>,
    /// Only stacks through this call site (what the Drilldown app's function details ask).
    #[prost(message, optional, tag = "6")]
    #[serde(alias = "stack_trace_selector")]
    pub stack_trace_selector: Option<StackTraceSelector>,
    /// Only the profiles with these IDs (an exemplar's `profile_id`).
    #[prost(string, repeated, tag = "7")]
    #[serde(alias = "profile_id_selector")]
    pub profile_id_selector: Vec<String>,
}

/// `types.v1.StackTraceSelector`: stacks whose root-first frames start with `call_site`.
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct StackTraceSelector {
    #[prost(message, repeated, tag = "1")]
    #[serde(alias = "call_site")]
    pub call_site: Vec<Location>,
}

/// `types.v1.Location`: a frame by function name.
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct Location {
    #[prost(string, tag = "1")]
    pub name: String,
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct SelectSeriesRequest {
    #[prost(string, tag = "1")]
    #[serde(rename = "profileTypeID", alias = "profile_typeID")]
    pub profile_type_id: String,
    #[prost(string, tag = "2")]
    #[serde(alias = "label_selector")]
    pub label_selector: String,
    #[prost(int64, tag = "3")]
    #[serde(with = "int64")]
    pub start: i64,
    #[prost(int64, tag = "4")]
    #[serde(with = "int64")]
    pub end: i64,
    #[prost(string, repeated, tag = "5")]
    #[serde(alias = "group_by")]
    pub group_by: Vec<String>,
    /// Seconds.
    #[prost(double, tag = "6")]
    pub step: f64,
    #[prost(enumeration = "TimeSeriesAggregationType", optional, tag = "7")]
    #[serde(with = "aggregation")]
    pub aggregation: Option<i32>,
    /// Keep only the top `limit` series by total.
    #[prost(int64, optional, tag = "9")]
    #[serde(with = "opt_int64")]
    pub limit: Option<i64>,
    /// `EXEMPLAR_TYPE_INDIVIDUAL`: each point names its largest profile.
    #[prost(enumeration = "ExemplarType", tag = "10")]
    #[serde(alias = "exemplar_type", with = "exemplar_type")]
    pub exemplar_type: i32,
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct SelectSeriesResponse {
    #[prost(message, repeated, tag = "1")]
    pub series: Vec<Series>,
}

/// Like [`SelectMergeStacktracesRequest`], for the samples labelled with one of `span_selector`'s
/// span IDs (16 hex digits, as OpenTelemetry writes them).
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct SelectMergeSpanProfileRequest {
    #[prost(string, tag = "1")]
    #[serde(rename = "profileTypeID", alias = "profile_typeID")]
    pub profile_type_id: String,
    #[prost(string, tag = "2")]
    #[serde(alias = "label_selector")]
    pub label_selector: String,
    #[prost(string, repeated, tag = "3")]
    #[serde(alias = "span_selector")]
    pub span_selector: Vec<String>,
    #[prost(int64, tag = "4")]
    #[serde(with = "int64")]
    pub start: i64,
    #[prost(int64, tag = "5")]
    #[serde(with = "int64")]
    pub end: i64,
    #[prost(int64, optional, tag = "6")]
    #[serde(alias = "max_nodes", with = "opt_int64")]
    pub max_nodes: Option<i64>,
    #[prost(enumeration = "ProfileFormat", tag = "7")]
    #[serde(with = "profile_format")]
    pub format: i32,
}

/// `querier.v1.HeatmapQueryType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum HeatmapQueryType {
    Unspecified = 0,
    Individual = 1,
    Span = 2,
}

/// `types.v1.ExemplarType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum ExemplarType {
    Unspecified = 0,
    None = 1,
    Individual = 2,
    Span = 3,
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct SelectHeatmapRequest {
    #[prost(string, tag = "1")]
    #[serde(rename = "profileTypeID", alias = "profile_typeID")]
    pub profile_type_id: String,
    #[prost(string, tag = "2")]
    #[serde(alias = "label_selector")]
    pub label_selector: String,
    #[prost(int64, tag = "3")]
    #[serde(with = "int64")]
    pub start: i64,
    #[prost(int64, tag = "4")]
    #[serde(with = "int64")]
    pub end: i64,
    /// Seconds.
    #[prost(double, tag = "5")]
    pub step: f64,
    #[prost(string, repeated, tag = "6")]
    #[serde(alias = "group_by")]
    pub group_by: Vec<String>,
    #[prost(enumeration = "HeatmapQueryType", tag = "7")]
    #[serde(alias = "query_type", with = "heatmap_query_type")]
    pub query_type: i32,
    #[prost(enumeration = "ExemplarType", tag = "8")]
    #[serde(alias = "exemplar_type", with = "exemplar_type")]
    pub exemplar_type: i32,
    #[prost(int64, optional, tag = "9")]
    #[serde(with = "opt_int64")]
    pub limit: Option<i64>,
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct SelectHeatmapResponse {
    #[prost(message, repeated, tag = "1")]
    pub series: Vec<HeatmapSeries>,
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct HeatmapSeries {
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<LabelPair>,
    #[prost(message, repeated, tag = "2")]
    pub slots: Vec<HeatmapSlot>,
}

/// One time column of a heatmap: `counts[i]` profiles (or spans) had a value in the bucket
/// starting at `y_min[i]`.
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct HeatmapSlot {
    /// Milliseconds; the slot covers (timestamp - step, timestamp].
    #[prost(int64, tag = "1")]
    #[serde(with = "int64")]
    pub timestamp: i64,
    #[prost(double, repeated, tag = "2")]
    #[serde(alias = "y_min")]
    pub y_min: Vec<f64>,
    #[prost(int32, repeated, tag = "3")]
    pub counts: Vec<i32>,
    #[prost(message, repeated, tag = "4")]
    pub exemplars: Vec<Exemplar>,
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Exemplar {
    #[prost(int64, tag = "1")]
    #[serde(with = "int64")]
    pub timestamp: i64,
    #[prost(string, tag = "2")]
    #[serde(alias = "profile_id")]
    pub profile_id: String,
    #[prost(string, tag = "3")]
    #[serde(alias = "span_id")]
    pub span_id: String,
    #[prost(int64, tag = "4")]
    #[serde(with = "int64")]
    pub value: i64,
    #[prost(message, repeated, tag = "5")]
    pub labels: Vec<LabelPair>,
    #[prost(string, tag = "6")]
    #[serde(alias = "trace_id")]
    pub trace_id: String,
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct GetProfileStatsRequest {}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct GetProfileStatsResponse {
    #[prost(bool, tag = "1")]
    #[serde(alias = "data_ingested")]
    pub data_ingested: bool,
    /// Milliseconds since the epoch.
    #[prost(int64, tag = "2")]
    #[serde(alias = "oldest_profile_time", with = "int64")]
    pub oldest_profile_time: i64,
    #[prost(int64, tag = "3")]
    #[serde(alias = "newest_profile_time", with = "int64")]
    pub newest_profile_time: i64,
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct AnalyzeQueryRequest {
    #[prost(int64, tag = "2")]
    #[serde(with = "int64")]
    pub start: i64,
    #[prost(int64, tag = "3")]
    #[serde(with = "int64")]
    pub end: i64,
    /// `<profile type ID>{selector}` or a selector.
    #[prost(string, tag = "4")]
    pub query: String,
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct AnalyzeQueryResponse {
    #[prost(message, repeated, tag = "1")]
    #[serde(alias = "query_scopes")]
    pub query_scopes: Vec<QueryScope>,
    #[prost(message, optional, tag = "2")]
    #[serde(alias = "query_impact")]
    pub query_impact: Option<QueryImpact>,
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct QueryScope {
    #[prost(string, tag = "1")]
    #[serde(alias = "component_type")]
    pub component_type: String,
    #[prost(uint64, tag = "2")]
    #[serde(alias = "component_count", with = "uint64")]
    pub component_count: u64,
    #[prost(uint64, tag = "3")]
    #[serde(alias = "block_count", with = "uint64")]
    pub block_count: u64,
    #[prost(uint64, tag = "4")]
    #[serde(alias = "series_count", with = "uint64")]
    pub series_count: u64,
    #[prost(uint64, tag = "5")]
    #[serde(alias = "profile_count", with = "uint64")]
    pub profile_count: u64,
    #[prost(uint64, tag = "6")]
    #[serde(alias = "sample_count", with = "uint64")]
    pub sample_count: u64,
    #[prost(uint64, tag = "7")]
    #[serde(alias = "index_bytes", with = "uint64")]
    pub index_bytes: u64,
    #[prost(uint64, tag = "8")]
    #[serde(alias = "profile_bytes", with = "uint64")]
    pub profile_bytes: u64,
    #[prost(uint64, tag = "9")]
    #[serde(alias = "symbol_bytes", with = "uint64")]
    pub symbol_bytes: u64,
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct QueryImpact {
    #[prost(uint64, tag = "2")]
    #[serde(alias = "total_bytes_in_time_range", with = "uint64")]
    pub total_bytes_in_time_range: u64,
    #[prost(uint64, tag = "3")]
    #[serde(alias = "total_queried_series", with = "uint64")]
    pub total_queried_series: u64,
    #[prost(bool, tag = "4")]
    #[serde(alias = "deduplication_needed")]
    pub deduplication_needed: bool,
}

// ---------------------------------------------------------------------------------------------
// proto3 JSON helpers

/// An integer written as a JSON string or number (proto3 JSON writes 64-bit integers as strings).
#[derive(Deserialize)]
#[serde(untagged)]
enum IntOrString {
    Int(i64),
    Str(String),
}

impl IntOrString {
    fn get<E: serde::de::Error>(self) -> Result<i64, E> {
        match self {
            IntOrString::Int(i) => Ok(i),
            IntOrString::Str(s) => s
                .trim()
                .parse()
                .map_err(|_| E::custom(format!("not a 64-bit integer: {s:?}"))),
        }
    }
}

/// `int64` as a string out, string or number in.
mod int64 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &i64, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        Option::<super::IntOrString>::deserialize(d)?.map_or(Ok(0), super::IntOrString::get)
    }
}

/// `uint64` as a string out, string or number in.
mod uint64 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let v =
            Option::<super::IntOrString>::deserialize(d)?.map_or(Ok(0), super::IntOrString::get)?;
        u64::try_from(v).map_err(|_| serde::de::Error::custom(format!("negative uint64: {v}")))
    }
}

mod opt_int64 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.collect_str(v),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
        Option::<super::IntOrString>::deserialize(d)?
            .map(super::IntOrString::get)
            .transpose()
    }
}

mod vec_int64 {
    use serde::ser::SerializeSeq;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[i64], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(v.len()))?;
        for x in v {
            seq.serialize_element(&x.to_string())?;
        }
        seq.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<i64>, D::Error> {
        Option::<Vec<super::IntOrString>>::deserialize(d)?
            .unwrap_or_default()
            .into_iter()
            .map(super::IntOrString::get)
            .collect()
    }
}

/// proto3 JSON writes `bytes` as standard base64 (with padding); URL-safe base64 is read too.
mod base64_bytes {
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = Option::<String>::deserialize(d)?.unwrap_or_default();
        STANDARD
            .decode(&s)
            .or_else(|_| URL_SAFE.decode(&s))
            .map_err(|e| serde::de::Error::custom(format!("bytes field is not base64: {e}")))
    }
}

/// An enum by name (proto3 JSON) or number.
#[derive(Deserialize)]
#[serde(untagged)]
enum EnumValue {
    Int(i32),
    Name(String),
}

fn enum_value<E: serde::de::Error>(
    v: EnumValue,
    from_name: fn(&str) -> Option<i32>,
) -> Result<i32, E> {
    match v {
        EnumValue::Int(i) => Ok(i),
        EnumValue::Name(n) => {
            from_name(&n).ok_or_else(|| E::custom(format!("unknown enum value {n:?}")))
        }
    }
}

mod profile_format {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::ProfileFormat;

    pub fn serialize<S: Serializer>(v: &i32, s: S) -> Result<S::Ok, S::Error> {
        match ProfileFormat::try_from(*v) {
            Ok(f) => s.serialize_str(f.as_str_name()),
            Err(_) => s.serialize_i32(*v),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i32, D::Error> {
        Option::<super::EnumValue>::deserialize(d)?.map_or(Ok(0), |v| {
            super::enum_value(v, |n| ProfileFormat::from_str_name(n).map(|f| f as i32))
        })
    }
}

mod aggregation {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::TimeSeriesAggregationType;

    pub fn serialize<S: Serializer>(v: &Option<i32>, s: S) -> Result<S::Ok, S::Error> {
        match v.map(TimeSeriesAggregationType::try_from) {
            None => s.serialize_none(),
            Some(Ok(a)) => s.serialize_str(a.as_str_name()),
            Some(Err(e)) => s.serialize_i32(e.0),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i32>, D::Error> {
        Option::<super::EnumValue>::deserialize(d)?
            .map(|v| {
                super::enum_value(v, |n| {
                    TimeSeriesAggregationType::from_str_name(n).map(|a| a as i32)
                })
            })
            .transpose()
    }
}

mod heatmap_query_type {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::HeatmapQueryType;

    pub fn serialize<S: Serializer>(v: &i32, s: S) -> Result<S::Ok, S::Error> {
        match HeatmapQueryType::try_from(*v) {
            Ok(f) => s.serialize_str(f.as_str_name()),
            Err(_) => s.serialize_i32(*v),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i32, D::Error> {
        Option::<super::EnumValue>::deserialize(d)?.map_or(Ok(0), |v| {
            super::enum_value(v, |n| HeatmapQueryType::from_str_name(n).map(|f| f as i32))
        })
    }
}

mod exemplar_type {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::ExemplarType;

    pub fn serialize<S: Serializer>(v: &i32, s: S) -> Result<S::Ok, S::Error> {
        match ExemplarType::try_from(*v) {
            Ok(f) => s.serialize_str(f.as_str_name()),
            Err(_) => s.serialize_i32(*v),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i32, D::Error> {
        Option::<super::EnumValue>::deserialize(d)?.map_or(Ok(0), |v| {
            super::enum_value(v, |n| ExemplarType::from_str_name(n).map(|f| f as i32))
        })
    }
}

impl HeatmapQueryType {
    pub fn as_str_name(self) -> &'static str {
        match self {
            HeatmapQueryType::Unspecified => "HEATMAP_QUERY_TYPE_UNSPECIFIED",
            HeatmapQueryType::Individual => "HEATMAP_QUERY_TYPE_INDIVIDUAL",
            HeatmapQueryType::Span => "HEATMAP_QUERY_TYPE_SPAN",
        }
    }
    pub fn from_str_name(name: &str) -> Option<HeatmapQueryType> {
        [
            HeatmapQueryType::Unspecified,
            HeatmapQueryType::Individual,
            HeatmapQueryType::Span,
        ]
        .into_iter()
        .find(|f| f.as_str_name() == name)
    }
}

impl ExemplarType {
    pub fn as_str_name(self) -> &'static str {
        match self {
            ExemplarType::Unspecified => "EXEMPLAR_TYPE_UNSPECIFIED",
            ExemplarType::None => "EXEMPLAR_TYPE_NONE",
            ExemplarType::Individual => "EXEMPLAR_TYPE_INDIVIDUAL",
            ExemplarType::Span => "EXEMPLAR_TYPE_SPAN",
        }
    }
    pub fn from_str_name(name: &str) -> Option<ExemplarType> {
        [
            ExemplarType::Unspecified,
            ExemplarType::None,
            ExemplarType::Individual,
            ExemplarType::Span,
        ]
        .into_iter()
        .find(|f| f.as_str_name() == name)
    }
}

impl ProfileFormat {
    /// The proto enum value name, as proto3 JSON writes it.
    pub fn as_str_name(self) -> &'static str {
        match self {
            ProfileFormat::Unspecified => "PROFILE_FORMAT_UNSPECIFIED",
            ProfileFormat::Flamegraph => "PROFILE_FORMAT_FLAMEGRAPH",
            ProfileFormat::Tree => "PROFILE_FORMAT_TREE",
            ProfileFormat::Dot => "PROFILE_FORMAT_DOT",
            ProfileFormat::Pprof => "PROFILE_FORMAT_PPROF",
        }
    }
    pub fn from_str_name(name: &str) -> Option<ProfileFormat> {
        [
            ProfileFormat::Unspecified,
            ProfileFormat::Flamegraph,
            ProfileFormat::Tree,
            ProfileFormat::Dot,
            ProfileFormat::Pprof,
        ]
        .into_iter()
        .find(|f| f.as_str_name() == name)
    }
}

impl TimeSeriesAggregationType {
    pub fn as_str_name(self) -> &'static str {
        match self {
            TimeSeriesAggregationType::Sum => "TIME_SERIES_AGGREGATION_TYPE_SUM",
            TimeSeriesAggregationType::Average => "TIME_SERIES_AGGREGATION_TYPE_AVERAGE",
        }
    }
    pub fn from_str_name(name: &str) -> Option<TimeSeriesAggregationType> {
        [
            TimeSeriesAggregationType::Sum,
            TimeSeriesAggregationType::Average,
        ]
        .into_iter()
        .find(|a| a.as_str_name() == name)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use prost::Message;

    #[test]
    fn json_names_and_int64_strings() {
        let req = SelectSeriesRequest {
            profile_type_id: "process_cpu:cpu:nanoseconds:cpu:nanoseconds".into(),
            label_selector: "{}".into(),
            start: 1_700_000_000_000,
            end: 1_700_000_100_000,
            group_by: vec!["pid".into()],
            step: 10.0,
            aggregation: Some(TimeSeriesAggregationType::Average as i32),
            limit: None,
            exemplar_type: 0,
        };
        let json = serde_json::to_value(&req).unwrap();
        assert_eq!(
            json["profileTypeID"],
            "process_cpu:cpu:nanoseconds:cpu:nanoseconds"
        );
        assert_eq!(json["labelSelector"], "{}");
        assert_eq!(json["start"], "1700000000000");
        assert_eq!(json["groupBy"][0], "pid");
        assert_eq!(json["aggregation"], "TIME_SERIES_AGGREGATION_TYPE_AVERAGE");
        let back: SelectSeriesRequest = serde_json::from_value(json).unwrap();
        assert_eq!(back, req);
        // Numbers, proto field names and enum numbers are accepted too.
        let alt: SelectSeriesRequest = serde_json::from_str(
            r#"{"profile_typeID":"a:b:c:d:e","start":5,"end":"6","group_by":["x"],"aggregation":1,"unknownField":true}"#,
        )
        .unwrap();
        assert_eq!(alt.profile_type_id, "a:b:c:d:e");
        assert_eq!((alt.start, alt.end), (5, 6));
        assert_eq!(alt.group_by, ["x"]);
        assert_eq!(alt.aggregation, Some(1));
    }

    #[test]
    fn field_numbers_match_upstream() {
        // Hand-encoded wire bytes: field 1 (string "a"), field 5 (varint 7) of
        // SelectMergeStacktracesRequest, and a FlameGraph with max_self = field 4.
        let req = SelectMergeStacktracesRequest::decode(&[0x0a, 1, b'a', 0x28, 7][..]).unwrap();
        assert_eq!(req.profile_type_id, "a");
        assert_eq!(req.max_nodes, Some(7));
        let fg = FlameGraph::decode(&[0x20, 3][..]).unwrap();
        assert_eq!(fg.max_self, 3);
        let diff = FlameGraphDiff::decode(&[0x28, 4, 0x30, 5][..]).unwrap();
        assert_eq!((diff.left_ticks, diff.right_ticks), (4, 5));
        let pt = ProfileType::decode(&[0x22, 1, b'c', 0x3a, 1, b'n'][..]).unwrap();
        assert_eq!(
            (pt.sample_type.as_str(), pt.period_unit.as_str()),
            ("c", "n")
        );
    }
}
